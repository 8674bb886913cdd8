"""Worker script: plain Python numbers and lists as values in a dist kind; prints RESULT {json}
with the pulled values and the errors (type and message) of values that are not accepted."""
import json

import numpy as np

import psframe

kv = psframe.create()
kv.init("b", [1.0, 2.0, 3.0])                  # one array of 3, not one value per device
kv.init("w", np.zeros(4, dtype=np.float32))
kv.push("w", [1.0, 2.0, 3.0, 4.0])             # numbers take the key's dtype
b, w = np.empty(3), np.empty(4, dtype=np.float32)
kv.pull("b", b)
kv.pull("w", w)
kv.init(["s", "i"], [0.5, [1, 2]])
s, i = np.empty(()), np.empty(2, dtype=np.int64)
kv.pushpull(["s", "i"], [float(kv.rank), [kv.rank, 10 * kv.rank]], out=[s, i])
errors = {}
for name, call in (("str", lambda: kv.push("w", "1,2,3,4")),
                   ("out", lambda: kv.pull("w", [0.0] * 4)),
                   ("bool", lambda: kv.init("flags", np.array([True, False])))):
    try:
        call()
    except Exception as exc:       # noqa: BLE001 (reported to the test, which checks the type)
        errors[name] = [type(exc).__name__, str(exc)]
res = {"b": b.tolist(), "w": w.tolist(), "w_dtype": str(w.dtype), "s": float(s), "i": i.tolist(),
       "errors": errors}
kv.close()
print("RESULT " + json.dumps(res))
