"""Worker script: MXNet's dist_sync 2bit compression test (tests/nightly/dist_sync_kvstore.py),
with its optimizer (``weight += rescale_grad * grad``, rescale_grad 2) on the servers. Prints
one RESULT line: the distinct values of every pull, so the test compares them with MXNet's
expectations; rank 0 also saves the random-gradient pulls and wire byte counts to argv[1]."""
import json
import os
import sys

import numpy as np

import psframe

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mxnet_test_optimizer import MXNetTest  # noqa: E402

THRESHOLD, RATE, NREPEAT = 0.5, 2.0, 3
SHAPES = {"1000": (2, 3), "1200": (1211, 1211), "1300": (1200, 1200)}
INIT_KEYS = {"1001": (2, 3), "1201": (1211, 1211), "1301": (1200, 1200)}
RANDOM_KEYS = {"1002": (2, 3), "1202": (1211, 1211), "1302": (1200, 1200)}

kv = psframe.create("dist_sync")
kv.set_optimizer(MXNetTest(rescale_grad=RATE))
kv.set_gradient_compression({"type": "2bit", "threshold": THRESHOLD})
for k, s in SHAPES.items():
    kv.init(k, np.zeros(s, np.float32))
for k, s in INIT_KEYS.items():       # init is never compressed
    kv.init(k, np.ones(s, np.float32))
seen = {}


def pulled(k, s, name):
    val = np.full(s, -7.0, np.float32)
    kv.pull(k, val)
    seen.setdefault(k, {})[name] = np.unique(val).tolist()
    return val


for k, s in SHAPES.items():          # pull before push
    pulled(k, s, "before")
for k, s in INIT_KEYS.items():
    pulled(k, s, "init")
for k, s in SHAPES.items():          # zeros stay zeros
    kv.push(k, np.zeros(s, np.float32))
    pulled(k, s, "zero")
for k, s in SHAPES.items():          # the residual sequence
    for i, v in enumerate([0.4, THRESHOLD - 0.4, 0.2, THRESHOLD - 0.2]):
        kv.push(k, np.full(s, v, np.float32))
        pulled(k, s, f"residual{i}")
for k, s in SHAPES.items():          # one threshold: sent as is, residual stays 0
    kv.push(k, np.full(s, THRESHOLD, np.float32))
    pulled(k, s, "ones")

# the bytes of one round of pushes of every key, as the servers counted them
kv.barrier()
before = sum(st["bytes_in_wire"] for st in kv.server_stats())
kv.barrier()                         # nobody pushes before every worker has read the counters
for k, s in SHAPES.items():
    kv.push(k, np.zeros(s, np.float32))
kv.barrier()
round_bytes = sum(st["bytes_in_wire"] for st in kv.server_stats()) - before
kv.barrier()                         # nobody sends more before every worker has read them again

# random gradients (different per rank) on fresh keys: the test simulates quantize + residual
for k, s in RANDOM_KEYS.items():
    kv.init(k, np.zeros(s, np.float32))
saved = {}
for step in range(NREPEAT):
    for j, (k, s) in enumerate(RANDOM_KEYS.items()):
        grad = np.random.default_rng([j, step, kv.rank]).random(s, dtype=np.float32)
        if step % 2:
            out = np.zeros(s, np.float32)
            kv.pushpull(k, grad, out)
        else:
            kv.push(k, grad)
            out = np.zeros(s, np.float32)
            kv.pull(k, out)
        saved[f"{k}@{step}"] = out
if kv.rank == 0:
    np.savez(sys.argv[1], **saved)
print("RESULT " + json.dumps({"seen": seen, "round_bytes": round_bytes}), flush=True)
kv.close()
