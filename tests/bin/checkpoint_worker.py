"""A worker for the checkpoint tests: Adam on the servers over a fusion group of small keys, a
big key sliced over the servers, one big enough that its slices are cut into chunks (parts of
at most 4 MiB), and a float16 key under multi_precision.

    checkpoint_worker.py run OUT [SAVE_AT URL]   20 steps (saving after step SAVE_AT to URL)
    checkpoint_worker.py resume OUT URL          load URL, then run on to step 20
    checkpoint_worker.py values OUT URL          load URL, write the values (no steps)
    checkpoint_worker.py save-twice OUT A B      2 steps, save A, 1 step, save B

Rank 0 writes OUT (an .npz of every key's final value). Gradients depend only on (rank, step,
key), so two runs that apply the same steps give the same weights bit for bit.
"""
import os
import sys

import numpy as np

import psframe

STEPS = 20
# an S3-compatible endpoint for s3:// URLs (credentials: the standard AWS variables)
OPTIONS = {"endpoint_url": os.environ["CKPT_ENDPOINT"]} if os.environ.get("CKPT_ENDPOINT") else None
SMALL = [f"b{i}" for i in range(6)]
CHUNKED = 2_200_000     # 8.8 MB: over 2 servers, 2 chunks of <= 4 MiB per slice


def initial():
    rng = np.random.default_rng(1)
    vals = {k: rng.standard_normal((3, 5 + i)).astype(np.float32) for i, k in enumerate(SMALL)}
    vals["big"] = rng.standard_normal(5000).astype(np.float32)       # > PSFRAME_BIGARRAY_BOUND
    vals["chunked"] = rng.random(CHUNKED, dtype=np.float32)
    vals["half"] = rng.standard_normal((40, 3)).astype(np.float16)
    return vals


def gradients(vals, rank, step):
    rng = np.random.default_rng(1000 * step + rank)
    return {k: (rng.random(v.shape, dtype=np.float32) - 0.5 if k == "chunked"
                else rng.standard_normal(v.shape).astype(v.dtype)) for k, v in vals.items()}


def setup(kind=None):
    kv = psframe.create(kind)
    vals = initial()
    kv.init(SMALL, [vals[k] for k in SMALL])           # one call: the small keys are fused
    kv.init("big", vals["big"])
    kv.init("chunked", vals["chunked"])
    kv.init("half", vals["half"])
    kv.set_optimizer(psframe.optim.Adam(lr=0.01, multi_precision=True, rescale_grad=0.5))
    return kv, vals


def train(kv, vals, first, last, save=None):
    keys = list(vals)
    for step in range(first, last):
        grads = gradients(vals, kv.rank, step)
        kv.pushpull(keys, [grads[k] for k in keys], out=[vals[k] for k in keys])
        if save is not None and step + 1 == save[0]:
            kv.save_checkpoint(save[1], worker_state={"step": step + 1, "rank": kv.rank,
                                                      "rng": np.arange(4) * kv.rank},
                               storage_options=OPTIONS)


def finish(kv, vals, out):
    kv.pull(list(vals), [vals[k] for k in vals])
    if kv.rank == 0:
        np.savez(out, **vals)
    kv.barrier()
    kv.close()


def main(mode, out, *rest):
    kv, vals = setup(os.environ.get("CKPT_KIND"))
    if mode == "run":
        save = (int(rest[0]), rest[1]) if rest else None
        train(kv, vals, 0, STEPS, save)
    elif mode == "resume":
        state = kv.load_checkpoint(rest[0], storage_options=OPTIONS)
        assert state["rank"] == kv.rank and np.array_equal(state["rng"], np.arange(4) * kv.rank), state
        train(kv, vals, state["step"], STEPS)
    elif mode == "values":
        kv.load_checkpoint(rest[0], storage_options=OPTIONS)
    elif mode == "save-twice":
        train(kv, vals, 0, 2)
        kv.save_checkpoint(rest[0])
        print("SAVED-FIRST", flush=True)
        train(kv, vals, 2, 3)
        kv.save_checkpoint(rest[1])
    finish(kv, vals, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
