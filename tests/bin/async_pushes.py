"""Worker script: dist_async, k pushes per worker then a barrier; RESULT is the pulled value."""
import json
import sys

import numpy as np

import psframe

k = int(sys.argv[1])
kv = psframe.create("dist_async")
kv.init(0, np.zeros(1000, dtype=np.int64))
for i in range(k):
    kv.push(0, np.full(1000, 10 ** kv.rank, dtype=np.int64))
kv.barrier()
out = np.zeros(1000, dtype=np.int64)
kv.pull(0, out)
kv.close()
print("RESULT " + json.dumps({"value": int(out[0]), "uniform": bool((out == out[0]).all())}))
