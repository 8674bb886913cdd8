"""The worker script ``psframe-bench`` runs under the launcher: times push, pull and pushpull.

Argument 1 is a JSON spec ``{"cases": [{"label", "shapes", "ops"}], "rounds", "warmup"}``,
optionally with ``"compression"`` (a ``set_gradient_compression`` config; the values pushed are
then normal random numbers, not ones) and ``"count_bytes"`` (rank 0 reports the bytes the
servers received and the CPU seconds they used during each case's rounds, every worker its own
CPU seconds).
Each case runs its warm-up and timed rounds on its own, as a training loop repeats the same
sizes every step (and as the raw pyzmq baseline is measured): interleaved with rounds of 100 MiB,
a 1 MiB round ran from caches that those had just flushed. Every timed call starts right after a barrier; each worker prints its times as one
``RESULT {json}`` line, and the bench takes the slowest worker of each round.

With ``"link": IFACE`` in the spec (the multi-host bench), rank 0 also records, right before a
case's timed rounds and right after them (every worker at a barrier), the bytes its host's
interface received and sent (``/proc/net/dev`` of its namespace) and ``server_stats``.
"""
import json
import logging
import sys
import time

import numpy as np

import psframe
from psframe.bench.cases import rounds_for
from psframe.bench.netns import interface_bytes

logger = logging.getLogger("psframe.bench.job")


def _timed(kv, fn):
    kv.barrier()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Case:
    """One case's keys, arrays and timed operations."""

    def __init__(self, kv, spec, random_values=False):
        self.kv, self.spec, self.label = kv, spec, spec["label"]
        self.keys = [f"{self.label}/{i}" for i in range(len(spec["shapes"]))]
        rng = np.random.default_rng(kv.rank)
        self.values = [rng.standard_normal(tuple(s), dtype=np.float32) if random_values
                       else np.ones(tuple(s), dtype=np.float32) for s in spec["shapes"]]
        self.wire_bytes = None     # bytes the servers received during the rounds (count_bytes)
        self.cpu_s = self.server_cpu_s = None     # CPU seconds of this worker / all servers
        self.outs = [np.empty_like(v) for v in self.values]
        self.times = {op: [] for op in spec["ops"]}

    def push(self):
        self.kv.push(self.keys, self.values)
        self.kv._flush()      # a push counts as done once the servers merged it (acked)

    def pull(self):
        self.kv.pull(self.keys, self.outs)

    def pushpull(self):
        self.kv.pushpull(self.keys, self.values, self.outs)

    def round(self):
        for op in self.spec["ops"]:       # push before pull: a pull never waits for a step
            self.times[op].append(_timed(self.kv, getattr(self, op)))

    def result(self, warmup):
        out = {"label": self.label, "times": {op: t[warmup:] for op, t in self.times.items()}}
        if self.cpu_s is not None:
            out["cpu_s"], out["pushes"] = self.cpu_s, len(next(iter(self.times.values())))
        if self.wire_bytes is not None:      # every round (warm-up too) pushes the same bytes
            out["wire_bytes"], out["server_cpu_s"] = self.wire_bytes, self.server_cpu_s
        return out


def _counters(kv):
    """``(bytes of pushed arrays received, CPU seconds)`` summed over the servers so far (rank
    0 only, else ``(None, None)``)."""
    if kv.rank != 0:
        return None, None
    stats = kv.server_stats()
    return sum(s["bytes_in_wire"] for s in stats), sum(s["cpu_s"] for s in stats)


def _link_snapshot(kv, iface):
    """Rank 0: its link's byte counters and the servers' counters, once every worker is here."""
    kv.barrier()
    if kv.rank != 0:
        return None
    received, sent = interface_bytes(iface)
    return {"received": received, "sent": sent, "servers": kv.server_stats()}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    logging.basicConfig(level=logging.WARNING)
    with psframe.create() as kv:
        if spec.get("compression"):
            kv.set_gradient_compression(spec["compression"])
        idle = kv.server_stats() if kv.rank == 0 else None
        cases = [Case(kv, c, random_values=bool(spec.get("compression"))) for c in spec["cases"]]
        for case in cases:
            kv.init(case.keys, case.values)
        if spec.get("optimizer"):
            kv.set_optimizer(psframe.optim.from_spec(spec["optimizer"]))
        link, iface = {}, spec.get("link")
        for case in cases:
            # every round starts with a barrier: nobody pushes before rank 0 read the counters
            before_bytes, cpu0 = _counters(kv) if spec.get("count_bytes") else (None, None)
            t0 = time.process_time()
            for r in range(spec["warmup"] + rounds_for(case.spec["nbytes"], spec["rounds"])):
                if iface and r == spec["warmup"]:
                    before = _link_snapshot(kv, iface)
                case.round()
            if iface:
                link[case.label] = [before, _link_snapshot(kv, iface)]
            if spec.get("count_bytes"):
                case.cpu_s = time.process_time() - t0
                kv.barrier()
                after, cpu1 = _counters(kv)
                if kv.rank == 0:
                    case.wire_bytes, case.server_cpu_s = after - before_bytes, cpu1 - cpu0
        kv.barrier()
        out = {"rank": kv.rank, "kind": kv.type, "cases": [c.result(spec["warmup"]) for c in cases]}
        if iface and kv.rank == 0:
            out["link"] = link
        if kv.rank == 0:
            out["idle_servers"], out["servers"] = idle, kv.server_stats()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
