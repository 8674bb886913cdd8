"""The worker script ``psframe-bench`` runs under the launcher: times push, pull and pushpull.

Argument 1 is a JSON spec ``{"cases": [{"label", "shapes", "ops"}], "rounds", "warmup"}``. Every
timed call starts right after a barrier, so all workers begin a round together; each worker
prints its own times as one ``RESULT {json}`` line and the bench takes the slowest worker of
each round (a round ends for the job when its last worker is done).
"""
import json
import logging
import sys
import time

import numpy as np

import psframe

logger = logging.getLogger("psframe.bench.job")


def _timed(kv, fn):
    kv.barrier()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(kv, case, rounds, warmup):
    """Init the case's keys, then time each op over ``warmup + rounds`` rounds."""
    label = case["label"]
    keys = [f"{label}/{i}" for i in range(len(case["shapes"]))]
    values = [np.ones(tuple(s), dtype=np.float32) for s in case["shapes"]]
    outs = [np.empty_like(v) for v in values]
    kv.init(keys, values)

    def push():
        kv.push(keys, values)
        kv._flush()          # a push counts as done once the servers merged it (acked)

    ops = {"push": push, "pull": lambda: kv.pull(keys, outs),
           "pushpull": lambda: kv.pushpull(keys, values, outs)}
    times = {}
    for op in case["ops"]:
        if op == "pull":
            push()           # so a pull never waits for a step: it measures the transfer
        samples = [_timed(kv, ops[op]) for _ in range(warmup + rounds)]
        times[op] = samples[warmup:]
    result = {"label": label, "times": times}
    if case.get("stats") and kv.rank == 0:
        result["servers"] = kv.server_stats()
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    logging.basicConfig(level=logging.WARNING)
    with psframe.create() as kv:
        results = []
        if kv.rank == 0:
            idle = kv.server_stats()
        for case in spec["cases"]:
            results.append(run_case(kv, case, spec["rounds"], spec["warmup"]))
        kv.barrier()
    out = {"rank": kv.rank, "kind": kv.type, "cases": results}
    if kv.rank == 0:
        out["idle_servers"] = idle
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
