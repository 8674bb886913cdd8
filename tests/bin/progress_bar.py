"""Worker script: rank 0 draws a tqdm bar on stderr (as the examples do), every rank prints a
plain line; the launcher must keep each line's prefix and write no half-drawn bar to logs."""
import sys

from tqdm import tqdm

import psframe

with psframe.create() as kv:
    for step in tqdm(range(5), desc="steps", file=sys.stderr, mininterval=0, disable=kv.rank != 0):
        kv.barrier()
    print(f"rank {kv.rank} done", flush=True)
