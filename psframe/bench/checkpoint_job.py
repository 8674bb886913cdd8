"""The worker script of ``psframe-bench --mode checkpoint``: times ``save_checkpoint`` and
``load_checkpoint`` of a model-shaped parameter list.

Argument 1 is a JSON spec ``{"shapes", "url", "rounds", "warmup", "optimizer",
"storage_options"}``. Round ``r`` saves to ``url/round-r`` and loads it back; every timed call
starts right after a barrier and ends when every worker returned (save and load are collective).
Each worker prints ``RESULT {json}``; rank 0 also checks that the loaded values are the saved ones.
"""
import json
import sys
import time

import numpy as np

import psframe


def main(argv=None):
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    options = spec.get("storage_options") or None
    with psframe.create() as kv:
        keys = [f"p{i}" for i in range(len(spec["shapes"]))]
        rng = np.random.default_rng(0)
        values = [rng.standard_normal(tuple(s), dtype=np.float32) for s in spec["shapes"]]
        kv.init(keys, values)
        if spec.get("optimizer"):
            kv.set_optimizer(psframe.optim.from_spec(spec["optimizer"]))
        kv.pushpull(keys, values)                       # one step: optimizer state exists
        saves, loads = [], []
        for r in range(spec["warmup"] + spec["rounds"]):
            url = f"{spec['url'].rstrip('/')}/round-{r}"
            kv.barrier()
            t0 = time.perf_counter()
            kv.save_checkpoint(url, storage_options=options)
            saves.append(time.perf_counter() - t0)
            kv.barrier()
            t0 = time.perf_counter()
            kv.load_checkpoint(url, storage_options=options)
            loads.append(time.perf_counter() - t0)
        outs = [np.empty_like(v) for v in values]
        kv.pull(keys, outs)
        assert all(np.array_equal(a, b) for a, b in zip(outs, values)), "loaded values differ"
        w = spec["warmup"]
        print("RESULT " + json.dumps({"rank": kv.rank, "save": saves[w:], "load": loads[w:]}), flush=True)
        kv.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
