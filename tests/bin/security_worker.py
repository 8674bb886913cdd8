"""Worker script for the security tests: initialise, publish what an attacker could learn
(addresses; rank 1 its own credentials, as if stolen), wait while the test attacks, then train
and check the weights exactly against numpy.
``security_worker.py DIR STEPS [SIZE [SECONDS_PER_STEP [OVER_BUDGET_BYTES]]]``: with
OVER_BUDGET_BYTES, finally initialise a key that big and print the error."""
import json
import os
import sys
import time

import numpy as np

import psframe

out_dir, steps = sys.argv[1], int(sys.argv[2])
SIZE = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
PAUSE = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
OVER = int(sys.argv[5]) if len(sys.argv) > 5 else 0
with psframe.create() as kv:
    kv.init("w", np.zeros(SIZE, np.float32))
    kv.set_optimizer(psframe.optim.SGD(lr=1.0))
    if kv.rank == 0:
        info = {"scheduler": os.environ["PSFRAME_SCHEDULER"], "servers": kv.server_addresses,
                "local": [a or "" for a in kv.local_addresses], "size": SIZE}
        with open(os.path.join(out_dir, "info.json.tmp"), "w") as f:
            json.dump(info, f)
        os.rename(os.path.join(out_dir, "info.json.tmp"), os.path.join(out_dir, "info.json"))
    if kv.rank == 1 and os.environ.get("PSFRAME_CREDENTIALS"):
        fd = os.open(os.path.join(out_dir, "stolen.tmp"), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.environ["PSFRAME_CREDENTIALS"])
        os.rename(os.path.join(out_dir, "stolen.tmp"), os.path.join(out_dir, "stolen"))
    print(f"READY rank={kv.rank}", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(out_dir, "go")):
        if time.monotonic() > deadline:
            sys.exit("the test never said go")
        time.sleep(0.05)
    kv.barrier()
    out = np.empty(SIZE, np.float32)
    for t in range(steps):
        kv.pushpull("w", np.full(SIZE, (kv.rank + 1) * (t + 1), np.float32), out)
        print(f"STEP {t} rank={kv.rank} at={time.time():.3f}", flush=True)
        time.sleep(PAUSE)
    # SGD lr=1 on the sum of every worker's gradient: w = -sum_t n(n+1)/2 (t + 1), exact
    n = kv.num_workers
    expected = np.zeros(SIZE, np.float32)
    for t in range(steps):
        expected -= np.float32(n * (n + 1) // 2 * (t + 1))
    assert np.array_equal(out, expected), (out[:4], expected[:4])
    print(f"EXACT rank={kv.rank}", flush=True)
    kv.barrier()
    if OVER:
        try:
            kv.init("huge", np.zeros(OVER // 4, np.float32))
        except psframe.PSError as exc:
            print(f"OVER BUDGET rank={kv.rank} {type(exc).__name__}: {exc}", flush=True)
        kv.barrier()
    if kv.rank == 0:
        stats = kv.server_stats()
        print("STATS " + json.dumps([{k: s.get(k) for k in (
            "refused_connections", "refused_messages", "cut_off_peers", "peak_rss_bytes", "bytes_in")}
            for s in stats]), flush=True)
