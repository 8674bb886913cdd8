"""Worker script: dist_async, each pull right after its own push must include that push (and
every earlier one of this worker); RESULT has the final value and whether that held."""
import json
import sys

import numpy as np

import psframe

k = int(sys.argv[1])
kv = psframe.create("dist_async")
r = kv.rank
kv.init("c", np.zeros(64, dtype=np.int64))
out = np.zeros(64, dtype=np.int64)
own_seen = True
for i in range(k):
    kv.push("c", np.full(64, 100 ** r, dtype=np.int64))
    kv.pull("c", out)
    own_seen &= bool(((out // 100 ** r) % 100 >= i + 1).all())
kv.barrier()
kv.pull("c", out)
kv.close()
print("RESULT " + json.dumps({"value": int(out[0]), "own_seen": own_seen}))
