"""Worker script for the host-tier tests: every kind of key through dist_sync, then Adam on the
servers; prints digests of the final values (to compare tiered and flat runs bit for bit), its
own plain-numpy check of the sums, the server counters and the job's /dev/shm prefix.

    host_tier_job.py [--raise-rank R] [--kill-aggregator] [--slow-lead S]

``--slow-lead S``: local rank 0 (whose thread is the aggregator) of every host but the first
starts its init S seconds after the others, who pull right after their init.
"""
import argparse
import hashlib
import json
import os
import signal
import time

import numpy as np

import psframe
from psframe import config as C
from psframe.aggregation import shm

STEPS = 3
p = argparse.ArgumentParser()
p.add_argument("--raise-rank", type=int, default=None)
p.add_argument("--kill-aggregator", action="store_true")
p.add_argument("--slow-lead", type=float, default=0.0)
args = p.parse_args()

cfg = C.from_env()
prefix = shm.job_prefix(cfg.scheduler)
kv = psframe.create()
r, n = kv.rank, kv.num_workers


def grad(key, step, rank, shape):
    """Seeded float32 values whose sum depends on the order of additions."""
    seed = int(hashlib.sha1(f"{key}/{step}/{rank}".encode()).hexdigest()[:8], 16)
    return (np.random.default_rng(seed).standard_normal(shape) * 10.0 ** (rank % 3)).astype(np.float32)


def host_order_sum(key, step, shape, plus_one=False):
    """The documented order: each host's workers in local-rank order, then hosts in order
    (``plus_one``: each worker's value is its two-device list ``[grad, ones]``, summed first)."""
    def value(q):
        g = grad(key, step, q, shape)
        return g + np.ones(shape, np.float32) if plus_one else g
    total = None
    first = 0
    for size in host_sizes:
        part = value(first).copy()
        for q in range(first + 1, first + size):
            part += value(q)
        total = part if total is None else total + part
        first += size
    return total


shapes = {"plain": (300, 7), "big": (5000,), "pp": (64,)}
small = [f"s{i}" for i in range(12)]
if kv.local_rank == 0 and r > 0:
    time.sleep(args.slow_lead)
kv.init(list(shapes), [np.zeros(s, np.float32) for s in shapes.values()])
zeros = [np.ones(s, np.float32) for s in shapes.values()]
kv.pull(list(shapes), zeros)        # a pull with no push before it: the initial values
assert all(not z.any() for z in zeros)
kv.init(small, [np.zeros(10 + i, np.float32) for i in range(12)])
# every worker's host size, in rank order (the job's layout, learnt through a barrier-free pull)
kv.init("layout", np.zeros(n, np.int64))
mine = np.zeros(n, np.int64)
mine[r] = kv.local_size if kv.local_rank == 0 else 0
kv.push("layout", mine)
sizes = np.zeros(n, np.int64)
kv.pull("layout", sizes)
host_sizes = [int(s) for s in sizes if s]

if args.kill_aggregator and kv.local_rank == 0:
    # a segment a kill between creation and the last attach would leave: the launcher removes it
    shm.Segment.create(f"{prefix}-left-by-a-kill", 4096)
    os.kill(os.getpid(), signal.SIGKILL)

exact = True
for step in range(1, STEPS + 1):
    if args.raise_rank == r and step == 2:
        raise RuntimeError(f"rank {r} fails on purpose at step {step}")
    kv.push(["plain", "big"], [grad("plain", step, r, shapes["plain"]),
                               # a list per device: summed on the worker first
                               [grad("big", step, r, shapes["big"]), np.ones(shapes["big"], np.float32)]])
    outs = [np.empty(shapes["plain"], np.float32), np.empty(shapes["big"], np.float32)]
    kv.pull(["plain", "big"], outs)
    pp = grad("pp", step, r, shapes["pp"])
    kv.pushpull("pp", pp)
    kv.push(small, [grad(k, step, r, (10 + i,)) for i, k in enumerate(small)])
    souts = [np.empty(10 + i, np.float32) for i in range(12)]
    kv.pull(small, souts)
    exact &= bool(np.array_equal(outs[1], host_order_sum("big", step, shapes["big"], plus_one=True)))
    exact &= bool(np.array_equal(outs[0], host_order_sum("plain", step, shapes["plain"])))
    exact &= bool(np.array_equal(pp, host_order_sum("pp", step, shapes["pp"])))
    exact &= all(np.array_equal(o, host_order_sum(k, step, o.shape)) for k, o in zip(small, souts))

kv.set_optimizer(psframe.optim.Adam(lr=0.01))
for step in range(STEPS + 1, 2 * STEPS + 1):
    kv.pushpull(["plain", "big", "pp"], [grad(k, step, r, s) for k, s in shapes.items()])
    kv.push(small, [grad(k, step, r, (10 + i,)) for i, k in enumerate(small)])
final = {k: np.empty(s, np.float32) for k, s in shapes.items()}
final.update({k: np.empty(10 + i, np.float32) for i, k in enumerate(small)})
kv.pull(list(final), list(final.values()))
kv.barrier()
stats = kv.server_stats() if r == 0 else None
kv.close()
print("RESULT " + json.dumps({
    "digest": {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in final.items()},
    "exact": exact, "prefix": prefix, "host": cfg.host, "hosts": host_sizes,
    "stats": [{"hosts": s["hosts"], "key_steps": s["key_steps"]} for s in stats] if stats else None}),
    flush=True)
