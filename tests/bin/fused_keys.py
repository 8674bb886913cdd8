"""Worker script: many small keys that travel fused, used whole, one by one and in subsets.

Argument 1: "semantics" (default) or "mismatch" (worker 1 initialises the keys one by one).
Every value is an exact small integer, so every expected value is exact: key i at step s is the
sum over ranks r of ``(i % 7 + 1) * (r + 1) * s``. RESULT: which phases matched, and (rank 0)
how many entries the servers store.
"""
import json
import sys

import numpy as np

import psframe

mode = sys.argv[1] if len(sys.argv) > 1 else "semantics"
SHAPES = [(), (0,), (7,), (3, 4), (64,), (20000,)]      # the last one is too big to fuse
DTYPES = [np.float32, np.int64]
K = 300
keys = [f"p{i}" for i in range(K)]
shapes = [SHAPES[i % len(SHAPES)] for i in range(K)]
dtypes = [DTYPES[(i // 3) % 2] for i in range(K)]


def value(i, rank, step):
    return np.full(shapes[i], (i % 7 + 1) * (rank + 1) * step, dtype=dtypes[i])


def total(i, step, n):
    return (i % 7 + 1) * step * n * (n + 1) // 2


with psframe.create() as kv:
    n, rank = kv.num_workers, kv.rank
    zeros = [np.zeros(shapes[i], dtypes[i]) for i in range(K)]
    if mode == "mismatch" and rank == 1:
        for k, z in zip(keys, zeros):
            kv.init(k, z)
    else:
        kv.init(keys, zeros)
    outs = [np.empty(shapes[i], dtypes[i]) for i in range(K)]
    steps = [0] * K

    def check(idx):
        return all(np.array_equal(outs[i], np.full(shapes[i], total(i, steps[i], n), dtypes[i]))
                   for i in idx)

    def pushpull_all():
        for i in range(K):
            steps[i] += 1
        kv.pushpull(keys, [value(i, rank, steps[i]) for i in range(K)], outs)

    result = {}
    pushpull_all()
    pushpull_all()
    result["whole"] = check(range(K))
    # rank 0 goes key by key, pulling each right after its push; the others push the list
    for i in range(K):
        steps[i] += 1
    if rank == 0:
        for i in range(K):
            kv.pushpull(keys[i], value(i, rank, steps[i]), outs[i])
    else:
        kv.pushpull(keys, [value(i, rank, steps[i]) for i in range(K)], outs)
    result["mixed"] = check(range(K))
    # the even keys get two steps, the odd ones one: the groups are out of step
    even, odd = list(range(0, K, 2)), list(range(1, K, 2))
    for idx in (even, even, odd):
        for i in idx:
            steps[i] += 1
        kv.push([keys[i] for i in idx], [value(i, rank, steps[i]) for i in idx])
    kv.pull(keys, outs)
    result["subsets"] = check(range(K))
    for i in odd:
        steps[i] += 1
    kv.push([keys[i] for i in odd], [value(i, rank, steps[i]) for i in odd])
    pushpull_all()                                      # in step again: fused
    result["whole_again"] = check(range(K))
    kv.barrier()
    if rank == 0:
        result["entries"] = sum(s["keys"] for s in kv.server_stats())
        result["key_pushes"] = sum(sum(s["pushes"]) for s in kv.server_stats())
print("RESULT " + json.dumps(result), flush=True)
