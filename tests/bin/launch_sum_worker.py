"""Worker for the launcher tests: 5 dist_sync steps of push(rank+1) then pull, checking the
sum N(N+1)/2 each step, then close. Options make one rank misbehave at a step:

  --fail-rank R --fail-step K --fail-code C   rank R exits C at step K (others block in pull)
  --hang-rank R --hang-step K                 rank R sleeps at step K (kill -9 it from outside)
  --never-start-rank R                        rank R never creates its KVStore (sleeps)
  --steps N, --sleep S (per step)
  --spawn-children                            every rank starts two `sleep 300` children: one
                                              in its process group, one in a session of its own

Prints "secret_sha=<sha256[:12]>" when PSF_SECRET is set, "STEP <k> OK" per step and "DONE rank=<r>" at the end (the tests read these).
"""
import argparse
import hashlib
import os
import socket
import subprocess
import sys
import time

import numpy as np

import psframe

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--fail-rank", type=int, default=-1)
p.add_argument("--fail-step", type=int, default=3)
p.add_argument("--fail-code", type=int, default=7)
p.add_argument("--hang-rank", type=int, default=-1)
p.add_argument("--hang-step", type=int, default=3)
p.add_argument("--never-start-rank", type=int, default=-1)
p.add_argument("--spawn-children", action="store_true")
args = p.parse_args()
if args.spawn_children:
    children = [subprocess.Popen(["sleep", "300"]),
                subprocess.Popen(["sleep", "300"], start_new_session=True)]

rank = int(os.environ["PSFRAME_RANK"])
if rank == args.never_start_rank:
    print(f"rank {rank} never starts (pid {os.getpid()})", flush=True)
    time.sleep(600)
    sys.exit(3)
kv = psframe.create()
n = kv.num_workers
print(f"worker rank={kv.rank} pid={os.getpid()} local_rank={kv.local_rank}/{kv.local_size} "
      f"host={os.environ['PSFRAME_HOST']} n={n}", flush=True)
print(f"hostname={socket.gethostname()}", flush=True)
if os.environ.get("PSF_SECRET"):
    print("secret_sha=" + hashlib.sha256(os.environ["PSF_SECRET"].encode()).hexdigest()[:12], flush=True)
kv.init("w", np.zeros(4))
out = np.zeros(4)
for step in range(1, args.steps + 1):
    if rank == args.fail_rank and step == args.fail_step:
        print(f"rank {rank} failing on purpose at step {step} with code {args.fail_code}", flush=True)
        os._exit(args.fail_code)
    if rank == args.hang_rank and step == args.hang_step:
        print(f"rank {rank} hanging at step {step} pid={os.getpid()}", flush=True)
        time.sleep(600)
    kv.push("w", np.full(4, rank + 1.0))
    kv.pull("w", out)
    expected = n * (n + 1) / 2
    assert np.all(out == expected), f"step {step}: pulled {out}, expected {expected}"
    print(f"STEP {step} OK", flush=True)
    time.sleep(args.sleep)
kv.close()
print(f"DONE rank={rank}", flush=True)
