"""Worker script: rank 1 raises right after init; every process must stop within seconds."""
import numpy as np, psframe, time
kv = psframe.create()
kv.init("w", np.zeros(3))
if kv.rank == 1:
    raise RuntimeError("boom at step 0")
out = np.zeros(3)
kv.push("w", np.ones(3)); kv.pull("w", out)
