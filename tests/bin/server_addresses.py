"""Worker script: RESULT is the addresses this worker reaches the servers at, how many requests
went over each transport, and pushpull sums of a big sliced key and a small key."""
import json

import numpy as np

import psframe

BIG, SMALL = 1_200_000, 1000     # the big key's two parts are 2.4 MB each: the unix lane's size
with psframe.create() as kv:
    kv.init("x", np.zeros(BIG, np.float32))         # sliced over the servers
    kv.init("y", np.zeros(SMALL, np.float32))
    before = dict(kv.sent_messages)
    out = np.empty(BIG, np.float32)
    kv.pushpull("x", np.full(BIG, kv.rank + 1, np.float32), out)
    after_big = dict(kv.sent_messages)
    small = np.empty(SMALL, np.float32)
    kv.pushpull("y", np.full(SMALL, kv.rank + 1, np.float32), small)
    after_small = dict(kv.sent_messages)
    result = {"addresses": kv.server_addresses, "local": kv.local_addresses,
              "big_sent": {k: after_big[k] - before[k] for k in before},
              "small_sent": {k: after_small[k] - after_big[k] for k in before},
              "sum": float(out[0]), "uniform": bool((out == out[0]).all()),
              "small_sum": float(small[0]), "small_uniform": bool((small == small[0]).all())}
print("RESULT " + json.dumps(result), flush=True)
