"""Worker script: a 4 KB pushpull at high priority overtakes a 100 MB pushpull at low priority
that is already queued. Values are exact small integers; RESULT says whether the small call
finished while the big one was still in flight, and whether both sums are exact.

With argument "replies": worker 0 sends pushpulls of "lo" (priority 1) then "hi" (priority 5);
worker 1 sends both a second later in one message, which completes both steps at once on the
server; the server answers "hi" first (worker 0's PSFRAME_TIMELINE shows the reply order).
"""
import json
import sys
import time

import numpy as np

import psframe

if sys.argv[1:] == ["replies"]:
    with psframe.create() as kv:
        kv.init(["lo", "hi"], [np.zeros(8, np.float32), np.zeros(8, np.float32)])
        lo, hi = np.ones(8, np.float32), np.ones(8, np.float32)
        kv.barrier()
        if kv.rank == 0:
            pending = [kv.pushpull_async("lo", lo, priority=1), kv.pushpull_async("hi", hi, priority=5)]
            for p in pending:
                p.wait()
        else:
            time.sleep(1.0)
            kv.pushpull(["lo", "hi"], [lo, hi])
        print("RESULT " + json.dumps({"exact": bool((lo == 2).all() and (hi == 2).all())}), flush=True)
    sys.exit(0)

BIG, SMALL = 25 * 2 ** 20, 1024          # float32 elements: 100 MiB and 4 KiB

with psframe.create() as kv:
    n = kv.num_workers
    kv.init(["big", "small"], [np.zeros(BIG, np.float32), np.zeros(SMALL, np.float32)])
    big = np.full(BIG, kv.rank + 1, np.float32)
    small = np.full(SMALL, 10 * (kv.rank + 1), np.float32)
    kv.barrier()
    pending = kv.pushpull_async("big", big, priority=-1)
    kv.pushpull("small", small, priority=10)
    big_still_in_flight = not pending.done()
    pending.wait()
    total = n * (n + 1) // 2
    print("RESULT " + json.dumps({
        "small_first": big_still_in_flight,
        "big_exact": bool((big == total).all()), "small_exact": bool((small == 10 * total).all())}),
        flush=True)
