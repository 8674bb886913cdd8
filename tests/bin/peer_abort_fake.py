"""Fake worker (no psframe): the EXIT_ABORTED_BY_PEER contract without the core. Every rank but
1 exits 75 at once ("a peer failed"); rank 1 takes a while to print its traceback, then exits 1.
With ``--only-peer-aborts`` every rank exits 75."""
import os
import sys
import time

from psframe.config import EXIT_ABORTED_BY_PEER

rank = int(os.environ["PSFRAME_RANK"])
if rank != 1 or "--only-peer-aborts" in sys.argv:
    print(f"rank {rank}: stopping, a peer failed", flush=True)
    sys.exit(EXIT_ABORTED_BY_PEER)
time.sleep(0.5)
raise ValueError("boom")
