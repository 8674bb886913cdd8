"""Worker for the stall tests: ranks that do not make the same calls. Prints "READY" once
its KVStore exists.

  --case skip-init       rank 2 never calls init('big'), which the others init and push
  --case optimizer-once  only rank 0 calls set_optimizer
  --case uneven          rank 0 pushes 5 steps and closes; the others push 10
  --case join            as uneven, but rank 0 (ranks below --joiners) calls kv.join() after
                         its 5 steps; every rank prints "VALUE <w[0]>" at the end (with SGD
                         lr=1 on the servers)
"""
import argparse

import numpy as np

import psframe

p = argparse.ArgumentParser()
p.add_argument("--case", required=True)
p.add_argument("--joiners", type=int, default=1)
args = p.parse_args()

kv = psframe.create()
rank = kv.rank
print(f"READY rank={rank}", flush=True)
kv.init("w", np.zeros(4, np.float32))
out = np.zeros(4, np.float32)
if args.case == "skip-init":
    keys, values, outs = ["w"], [np.ones(4, np.float32)], [out]
    if rank != 2:
        kv.init("big", np.zeros(8, np.float32))
        keys, values, outs = keys + ["big"], values + [np.ones(8, np.float32)], outs + [np.zeros(8, np.float32)]
    for step in range(1, 8):
        kv.pushpull(keys, values, out=outs)
elif args.case == "optimizer-once":
    if rank == 0:
        kv.set_optimizer(psframe.optim.SGD(lr=0.1))
    for step in range(1, 4):
        kv.pushpull("w", np.ones(4, np.float32), out=out)
elif args.case == "uneven":
    for step in range(1, 6 if rank == 0 else 11):
        kv.pushpull("w", np.ones(4, np.float32), out=out)
elif args.case == "join":
    kv.set_optimizer(psframe.optim.SGD(lr=1.0))
    for step in range(1, 6 if rank < args.joiners else 11):
        kv.pushpull("w", np.full(4, rank + 1, np.float32), out=out)
    kv.join()
    kv.pull("w", out=out)
    print(f"VALUE {out[0]!r}", flush=True)
kv.close()
print(f"DONE rank={rank}", flush=True)
