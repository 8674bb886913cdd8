"""Train a numpy MLP on scikit-learn's digits through a psframe KVStore (serial or on a cluster).

The same script runs in one process or as every worker of a job:

    python examples/train_mlp.py --epochs 10                      # kind "local", 1 worker
    psframe-launch -n 4 -s 2 examples/train_mlp.py --epochs 10    # "dist_sync", 4 workers

Each worker reads its own share of the shards through ``psframe.data``, computes the mean
gradient of its batch with a hand-written backward pass, and push-pulls it; the servers average
the workers' gradients (``rescale_grad = 1 / num_workers``) and apply SGD with momentum under a
``scaled_lr`` rate, with ``Warmup`` then ``Cosine`` decay. ``--compression 2bit`` (or ``fp16``)
compresses the pushed gradients (docs/compression.md). ``--batch-size`` is per worker, so the global batch is
``batch_size * num_workers``. When ``--data`` holds no shards yet, rank 0 writes them there first
(``psframe.data.write_partitions``; local path or ``s3://``). Rank 0 shows a progress bar and the
per-epoch loss/accuracy, then writes ``metrics.json`` and ``curves.png`` to ``--out``; its last
line is ``final test accuracy: 0.XXXX``.

With ``--checkpoint-dir URL --checkpoint-every N`` every worker joins a checkpoint of the job
(weights, SGD momentum, step counts, and each worker's data position) to ``URL/step-<steps>``
every N steps, and a start (or a restart by ``psframe-launch --max-restarts K``) resumes from
the newest complete one, to bitwise the same weights as a run that never stopped:

    psframe-launch -n 2 -s 2 --max-restarts 3 examples/train_mlp.py --checkpoint-dir ckpt --checkpoint-every 50
"""
import hashlib
import argparse
import json
import os
import posixpath
import sys
import time

import numpy as np

import psframe
from psframe.errors import DataError

KEYS = ("w1", "b1", "w2", "b2")


# -- data ---------------------------------------------------------------------------------
def write_digits(url, num_shards=8, storage_options=None):
    """Split scikit-learn's digits 75/25 (stratified, fixed seed) and write train/ and test/
    shards under ``url``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    psframe.data.write_partitions({"x": x_tr, "y": y_tr}, posixpath.join(url, "train"), num_shards,
                                  storage_options=storage_options)
    psframe.data.write_partitions({"x": x_te, "y": y_te}, posixpath.join(url, "test"), 1,
                                  storage_options=storage_options)


def has_data(url, storage_options=None):
    try:
        for part in ("train", "test"):
            psframe.data.PartitionedDataset(posixpath.join(url, part), 1, rank=0, num_workers=1,
                                            prefetch=0, storage_options=storage_options)
        return True
    except DataError:
        return False


def load_all(url, storage_options=None):
    """Every record of a split (for evaluation on rank 0), in stored order."""
    ds = psframe.data.PartitionedDataset(url, 4096, shuffle=False, rank=0, num_workers=1,
                                         prefetch=0, storage_options=storage_options)
    batches = list(ds)
    return (np.concatenate([b["x"] for b in batches]), np.concatenate([b["y"] for b in batches]))


# -- model: 64 -> hidden (ReLU) -> 10, softmax cross-entropy -------------------------------
def init_params(hidden, seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((64, hidden)) * np.sqrt(2 / 64)).astype(np.float32),
            "b1": np.zeros(hidden, np.float32),
            "w2": (rng.standard_normal((hidden, 10)) * np.sqrt(2 / hidden)).astype(np.float32),
            "b2": np.zeros(10, np.float32)}


def forward(p, x):
    h = np.maximum(x @ p["w1"] + p["b1"], 0)
    return h, h @ p["w2"] + p["b2"]


def loss_and_grads(p, x, y):
    """Mean cross-entropy of the batch and its gradient with respect to every parameter."""
    h, logits = forward(p, x)
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    d = prob
    d[np.arange(n), y] -= 1
    d /= n
    dh = (d @ p["w2"].T) * (h > 0)
    grads = {"w2": h.T @ d, "b2": d.sum(0), "w1": x.T @ dh, "b1": dh.sum(0)}
    return float(loss), {k: g.astype(np.float32) for k, g in grads.items()}


def evaluate(p, x, y):
    _, logits = forward(p, x)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((logits.argmax(1) == y).mean())


# -- outputs --------------------------------------------------------------------------------
def save_outputs(out, metrics):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = metrics["epochs"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, metrics["train_loss"], label="train")
    a1.plot(ep, metrics["test_loss"], label="test")
    a1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    a1.legend()
    a2.plot(ep, metrics["train_acc"], label="train")
    a2.plot(ep, metrics["test_acc"], label="test")
    a2.set(xlabel="epoch", ylabel="accuracy", title=f"accuracy ({metrics['num_workers']} workers)")
    a2.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="demo-output/digits",
                    help="dataset URL (local path or s3://...); written there if empty")
    ap.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// data")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16, help="per worker")
    ap.add_argument("--lr", type=float, default=0.8, help="peak learning rate for a global batch of 256")
    ap.add_argument("--warmup-epochs", type=float, default=2.0)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kvstore", default=None, help="KVStore kind (default: from the launcher)")
    ap.add_argument("--compression", choices=("none", "fp16", "2bit"), default="none",
                    help="gradient compression of the pushes (docs/compression.md)")
    ap.add_argument("--threshold", type=float, default=0.1,
                    help="2bit threshold: about the size of a typical gradient element")
    ap.add_argument("--out", default="demo-output/mlp", help="directory for metrics and plot")
    ap.add_argument("--checkpoint-dir", default=None,
                    help="directory URL for checkpoints (local path or s3://...); resume from the newest")
    ap.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    opts = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    t0 = time.monotonic()
    with psframe.create(args.kvstore) as kv:
        lead = kv.rank == 0
        if args.compression != "none":     # before the first push, on every worker
            kv.set_gradient_compression({"type": "2bit", "threshold": args.threshold}
                                        if args.compression == "2bit" else {"type": "fp16"})
        if lead and not has_data(args.data, opts):
            print(f"writing the digits dataset to {args.data}", flush=True)
            write_digits(args.data, storage_options=opts)
        kv.barrier()
        train = psframe.data.PartitionedDataset(posixpath.join(args.data, "train"),
                                                args.batch_size, shuffle=True, seed=args.seed,
                                                drop_last=True, storage_options=opts)
        if lead:
            x_tr, y_tr = load_all(posixpath.join(args.data, "train"), opts)
            x_te, y_te = load_all(posixpath.join(args.data, "test"), opts)

        params = init_params(args.hidden, args.seed)
        kv.init(list(KEYS), [params[k] for k in KEYS])     # rank 0's values win
        kv.pull(list(KEYS), [params[k] for k in KEYS])
        global_batch = args.batch_size * kv.num_workers
        lr = psframe.optim.lr.scaled_lr(args.lr, global_batch)
        warmup = int(args.warmup_epochs * len(train))
        total = args.epochs * len(train)
        schedule = psframe.optim.lr.Warmup(psframe.optim.lr.Cosine(lr, total), warmup)
        kv.set_optimizer(psframe.optim.SGD(momentum=args.momentum, lr_schedule=schedule,
                                           rescale_grad=1.0 / kv.num_workers))

        metrics = {"example": "train_mlp", "kvstore": kv.type, "num_workers": kv.num_workers,
                   "compression": args.compression,
                   "batch_size": args.batch_size, "global_batch": global_batch, "lr": lr,
                   "warmup_steps": warmup, "steps_per_epoch": len(train), "epochs": [],
                   "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
        steps = 0      # pushpulls of the whole job so far (a resumed run counts on)
        if args.checkpoint_dir:
            url = psframe.checkpoint.latest(args.checkpoint_dir, storage_options=opts)
            if url is not None:
                state = kv.load_checkpoint(url, storage_options=opts)
                train.load_state_dict(state["data"])
                steps = state["steps"]
                metrics.update(state.get("metrics") or {})
                kv.pull(list(KEYS), [params[k] for k in KEYS])
                print(f"rank {kv.rank}: resumed from {url} at step {steps}", flush=True)
        if lead:
            from tqdm import tqdm
            print(f"{kv.num_workers} worker(s), kvstore {kv.type}, global batch {global_batch}, "
                  f"lr {lr:g} (warmup {warmup} steps), {len(train)} steps/epoch", flush=True)
        batches = 0
        while train.epoch < args.epochs:     # the dataset moves on to the next epoch by itself
            epoch, first = train.epoch, train.state_dict()["batch"]
            bar = tqdm(train, total=len(train), initial=first, desc=f"epoch {epoch + 1}/{args.epochs}",
                       leave=False, mininterval=1.0, file=sys.stderr) if lead else train
            for batch in bar:
                _, grads = loss_and_grads(params, batch["x"], batch["y"])
                # One call for all keys; first layer first, so its weights are back soonest.
                kv.pushpull(list(KEYS), [grads[k] for k in KEYS], out=[params[k] for k in KEYS])
                batches += 1
                steps += 1
                if args.checkpoint_dir and steps % args.checkpoint_every == 0:
                    kept = {k: v for k, v in metrics.items() if isinstance(v, list)} if lead else None
                    kv.save_checkpoint(posixpath.join(args.checkpoint_dir, f"step-{steps:08d}"),
                                       worker_state={"data": train.state_dict(), "steps": steps,
                                                     "metrics": kept}, storage_options=opts)
            if lead:
                tl, ta = evaluate(params, x_tr, y_tr)
                vl, va = evaluate(params, x_te, y_te)
                for name, v in zip(("epochs", "train_loss", "train_acc", "test_loss", "test_acc"),
                                   (epoch + 1, tl, ta, vl, va)):
                    metrics[name].append(v)
                tqdm.write(f"epoch {epoch + 1:3d}  train loss {tl:.4f} acc {ta:.4f}  "
                           f"test loss {vl:.4f} acc {va:.4f}")
        print(f"rank {kv.rank}: trained on {batches} batches", flush=True)
        kv.barrier()     # every push merged before the counters are read
        if lead:
            counters = kv.server_stats()
            metrics["server_pushes"] = [s["pushes"] for s in counters]
            metrics["server_bytes_in_wire"] = [s["bytes_in_wire"] for s in counters]
            metrics["batches_rank0"] = batches
            metrics["wall_time_s"] = round(time.monotonic() - t0, 2)
            metrics["final_test_acc"] = metrics["test_acc"][-1] if metrics["test_acc"] else None
            metrics["steps"] = steps
            metrics["weights_sha256"] = hashlib.sha256(b"".join(params[k].tobytes() for k in KEYS)).hexdigest()
            save_outputs(args.out, metrics)
            print(f"metrics: {os.path.join(args.out, 'metrics.json')}")
            print(f"plot: {os.path.join(args.out, 'curves.png')}")
            print(f"weights sha256: {metrics['weights_sha256']} after {steps} steps")
            print(f"final test accuracy: {metrics['final_test_acc']:.4f}", flush=True)
        kv.barrier()     # rank 0 reads the servers' counters before anyone leaves


if __name__ == "__main__":
    main()
