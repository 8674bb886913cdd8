"""Worker script: dist_device_sync with cupy arrays through the host tier (runs where cupy and a
device exist). Each worker pushes a list of two device arrays per key and pulls into two."""
import json

import cupy
import numpy as np

import psframe

kv = psframe.create("dist_device_sync")
r, n = kv.rank, kv.num_workers
kv.init("w", np.zeros(1000, np.float32))
ok = []
for step in range(1, 4):
    parts = [cupy.full(1000, float(step * (r + 1)), cupy.float32), cupy.ones(1000, cupy.float32)]
    kv.push("w", parts)
    outs = [cupy.empty(1000, cupy.float32), cupy.empty(1000, cupy.float32)]
    kv.pull("w", outs)
    want = np.full(1000, float(step * n * (n + 1) // 2 + n), np.float32)
    ok.append(all(bool((o.get() == want).all()) for o in outs))
kv.close()
print("RESULT " + json.dumps({"ok": ok}))
