"""Worker script: rank 1 raises ValueError("boom") uncaught right after init while every other
rank blocks in a pull that can only complete with rank 1's push. The report must blame rank 1,
not the scheduler/servers/workers its failure took down (they exit EXIT_ABORTED_BY_PEER)."""
import numpy as np

import psframe

kv = psframe.create()
kv.init("w", np.zeros(3))
print(f"rank {kv.rank} initialised", flush=True)
if kv.rank == 1:
    raise ValueError("boom")
kv.push("w", np.ones(3))
out = np.zeros(3)
kv.pull("w", out)          # blocks: rank 1 never pushes
print("pull returned without rank 1", flush=True)
