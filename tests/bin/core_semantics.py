"""Worker script: the core semantics of dist_sync (docs/api.md "Semantics"), one RESULT line of facts."""
import json
import sys

import numpy as np

import psframe

kv = psframe.create()
r, n = kv.rank, kv.num_workers
res = {}
# rank 0's init wins
kv.init("w", np.full((3, 4), float(r + 10)))
out = np.zeros((3, 4))
kv.pull("w", out)
res["init"] = out[0, 0]
# sync rounds: push(rank+1) then pull -> sum
vals = []
for step in range(1, 6):
    kv.push("w", np.full((3, 4), float(step * (r + 1))))
    kv.pull("w", out)
    vals.append(out.tolist())
res["rounds"] = [v[0][0] for v in vals]
res["rounds_exact"] = all(np.all(np.array(v) == s * n * (n + 1) / 2) for s, v in enumerate(vals, 1))
# int keys, list keys, dtypes
keys = [7, "b16", "c32", "d64", "i32", "i64"]
dts = ["float32", "float16", "float32", "float64", "int32", "int64"]
kv.init(keys, [np.zeros(5, dtype=d) for d in dts])
big = 2 ** 40 + 3
pushes = [np.full(5, (r + 1) * (big if d == "int64" else 1), dtype=d) for d in dts]
kv.push(keys, pushes)
outs = [np.zeros(5, dtype=d) for d in dts]
kv.pull(keys, outs)
res["dtypes"] = {str(k): o.tolist() for k, o in zip(keys, outs)}
res["int64_exact"] = int(outs[-1][0]) == big * n * (n + 1) // 2
# a list of 2 arrays counts as their sum
kv.init("dev", np.zeros(4))
kv.push("dev", [np.ones(4), np.full(4, 2.0)])
o = np.zeros(4)
kv.pull("dev", [o])
res["device_list"] = o.tolist()
# big key sliced over the servers
m = 3_000_003
kv.init("big", np.zeros(m, dtype=np.float32))
payload = (np.arange(m, dtype=np.float32) % 1000) * (r + 1)
kv.push("big", payload)
ob = np.empty(m, dtype=np.float32)
kv.pull("big", ob)
res["big_exact"] = bool(np.array_equal(ob, (np.arange(m, dtype=np.float32) % 1000) * (n * (n + 1) / 2)))
# pushpull in place
pp = np.full(6, float(r + 1))
kv.init("pp", np.zeros(6))
kv.pushpull("pp", pp)
res["pushpull"] = pp.tolist()
# run ahead several steps without pulling
kv.init("ahead", np.zeros(2))
for i in range(10):
    kv.push("ahead", np.full(2, float(i + r)))
oa = np.zeros(2)
kv.pull("ahead", oa)
res["ahead"] = oa.tolist()
# errors
errs = {}
try:
    kv.push("w", np.zeros((4, 3)))
except psframe.ShapeMismatchError as e:
    errs["shape"] = str(e)
try:
    kv.pull("nope", np.zeros(1))
except psframe.UninitializedKeyError as e:
    errs["uninit"] = str(e)
try:
    kv.init("w", np.zeros((3, 4)))
except psframe.DoubleInitError as e:
    errs["double"] = str(e)
res["errors"] = errs
res["checksum"] = float(out.sum()) + float(ob.astype(np.float64).sum())
kv.barrier()
res["stats"] = kv.server_stats()[0]["pushes"] if r == 0 else None
kv.close()
print("RESULT " + json.dumps(res))
