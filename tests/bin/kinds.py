"""Worker script: dist_async with a server-side optimizer, and dist_device_sync with a list of
per-device arrays; prints RESULT {json}."""
import json
import sys

import numpy as np

import psframe

kind = sys.argv[1]
kv = psframe.create(kind)
kv.init("w", np.full(4, 10.0))
if kind == "dist_async":
    kv.set_optimizer(psframe.optim.SGD(lr=0.5))
    for _ in range(3):
        kv.push("w", np.ones(4))               # every push is one update: w -= 0.5 * 1
else:
    kv.push("w", [np.ones(4), np.full(4, 2.0)])   # two local devices: summed before sending
kv.barrier()
outs = [np.zeros(4), np.zeros(4)]
kv.pull("w", outs)                              # broadcast back to both devices
res = {"type": kv.type, "w": outs[0].tolist(), "same": bool((outs[0] == outs[1]).all())}
kv.close()
print("RESULT " + json.dumps(res))
