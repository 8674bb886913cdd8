"""Click-through prediction with a hashed-feature logistic regression on a sparse key.

The same script runs in one process or as every worker of a job:

    python examples/train_ctr.py                             # kind "local", 1 worker
    psframe-launch -n 4 -s 2 examples/train_ctr.py           # "dist_sync", 4 workers

The click log is synthetic, drawn from a known ground-truth model: each impression has
``--fields`` categorical fields (values drawn Zipf-like from ``--values`` per field), and is a
click with probability ``sigmoid(bias + sum of the true weights of its field values)``. When
``--data`` holds no log yet, rank 0 writes it there (``psframe.data.write_partitions``: train/
and test/ shards) and every worker reads its own share through ``PartitionedDataset``.

The model hashes every (field, value) pair into one of ``--buckets`` rows of a sparse key
``"w"`` (a ``(buckets, 1)`` table whose rows are spread over the servers) plus a dense bias.
Each step a worker pulls only the rows its batch uses, computes the logistic-loss gradient of
those rows, and pushes it as a ``psframe.RowSparse`` (ids repeat across a batch: psframe sums
them); the servers apply Adagrad lazily to the touched rows. Rank 0 then pulls the whole table
and prints, as its last line, ``test AUC 0.XXXX (ground-truth model 0.XXXX)``.
"""
import argparse
import json
import os
import posixpath
import time

import numpy as np

import psframe
from psframe.errors import DataError


# -- the click log ------------------------------------------------------------------------
def truth(fields, values, seed):
    """Ground-truth weights ``(fields, values)`` and bias."""
    rng = np.random.default_rng([seed, 1])
    return rng.normal(0.0, 0.8, (fields, values)), -1.0


def draw(n, fields, values, seed):
    """``n`` impressions: field values (Zipf-like popularity) and clicks of the true model."""
    rng = np.random.default_rng([seed, 2])
    popularity = 1.0 / np.arange(1, values + 1) ** 0.8
    popularity /= popularity.sum()
    x = rng.choice(values, size=(n, fields), p=popularity).astype(np.int64)
    w, b = truth(fields, values, seed)
    p = sigmoid(b + w[np.arange(fields), x].sum(axis=1))
    return x, (rng.random(n) < p).astype(np.float32), p


def write_log(url, args):
    x, y, _ = draw(args.train + args.test, args.fields, args.values, args.seed)
    psframe.data.write_partitions({"x": x[:args.train], "y": y[:args.train]},
                                  posixpath.join(url, "train"), 8)
    psframe.data.write_partitions({"x": x[args.train:], "y": y[args.train:]},
                                  posixpath.join(url, "test"), 1)


def has_log(url):
    try:
        for part in ("train", "test"):
            psframe.data.PartitionedDataset(posixpath.join(url, part), 1, rank=0, num_workers=1,
                                            prefetch=0)
        return True
    except DataError:
        return False


def load_test(url):
    ds = psframe.data.PartitionedDataset(posixpath.join(url, "test"), 65536, shuffle=False,
                                         rank=0, num_workers=1, prefetch=0)
    batches = list(ds)
    return np.concatenate([b["x"] for b in batches]), np.concatenate([b["y"] for b in batches])


# -- the model ----------------------------------------------------------------------------
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def hashed(x, buckets):
    """Row of every (field, value) pair: a fixed multiplicative hash, the same everywhere."""
    fields = np.arange(x.shape[1], dtype=np.uint64)
    h = (fields * np.uint64(1_000_003) + x.astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
    return ((h >> np.uint64(20)) % np.uint64(buckets)).astype(np.int64)


def auc(scores, labels):
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    ranks = np.empty(len(s))
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    ends = np.concatenate((starts[1:], [len(s)]))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    pos = labels > 0.5
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_step(kv, ids, y, rows, bias):
    """Pull the batch's rows, push the gradient of the batch's mean logistic loss."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    kv.pull("w", out=rows[:len(uniq)], row_ids=uniq)
    p = sigmoid(bias[0] + rows[:len(uniq), 0][inverse].sum(axis=1))
    d = ((p - y) / len(y)).astype(np.float32)
    # one gradient row per (impression, field): duplicates are summed by psframe
    kv.push("w", psframe.RowSparse(ids.reshape(-1), np.repeat(d, ids.shape[1])[:, None]))
    kv.pushpull("bias", np.array([d.sum()], np.float32), out=bias)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="demo-output/clicks", help="log URL; written there if empty")
    ap.add_argument("--train", type=int, default=200_000, help="impressions to train on")
    ap.add_argument("--test", type=int, default=50_000, help="impressions to test on")
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--values", type=int, default=200, help="values per field")
    ap.add_argument("--buckets", type=int, default=1 << 18, help="rows of the hashed table")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256, help="global batch, split over workers")
    ap.add_argument("--lr", type=float, default=0.2, help="Adagrad learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kvstore", default=None, help="KVStore kind (default: from the launcher)")
    ap.add_argument("--out", default="demo-output/ctr", help="directory for metrics.json")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.monotonic()
    with psframe.create(args.kvstore) as kv:
        lead = kv.rank == 0
        if lead and not has_log(args.data):
            print(f"writing the click log to {args.data}", flush=True)
            write_log(args.data, args)
        kv.barrier()
        batch = max(1, args.batch_size // kv.num_workers)
        train = psframe.data.PartitionedDataset(posixpath.join(args.data, "train"), batch,
                                                shuffle=True, seed=args.seed, drop_last=True)
        kv.init("w", np.zeros((args.buckets, 1), np.float32), sparse=True)
        kv.init("bias", np.zeros(1, np.float32))
        kv.set_optimizer(psframe.optim.Adagrad(lr=args.lr, rescale_grad=1.0 / kv.num_workers))
        rows = np.zeros((batch * args.fields, 1), np.float32)
        bias = np.zeros(1, np.float32)
        kv.pull("bias", out=bias)
        for epoch in range(args.epochs):
            train.set_epoch(epoch)
            for b in train:
                train_step(kv, hashed(b["x"], args.buckets), b["y"], rows, bias)
        kv.barrier()
        if lead:
            table = np.zeros((args.buckets, 1), np.float32)
            kv.pull("w", out=table)         # a dense pull of the sparse key: the whole table
            x, y = load_test(args.data)
            ours = auc(bias[0] + table[hashed(x, args.buckets), 0].sum(axis=1), y)
            w, b0 = truth(args.fields, args.values, args.seed)
            best = auc(b0 + w[np.arange(args.fields), x].sum(axis=1), y)
            metrics = {"example": "train_ctr", "kvstore": kv.type, "num_workers": kv.num_workers,
                       "global_batch": batch * kv.num_workers, "steps_per_epoch": len(train),
                       "epochs": args.epochs, "test_auc": ours, "ground_truth_auc": best,
                       "wall_time_s": round(time.monotonic() - t0, 2)}
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "metrics.json"), "w") as f:
                json.dump(metrics, f, indent=1)
            print(f"{kv.num_workers} worker(s), kvstore {kv.type}, {len(train)} steps/epoch, "
                  f"{args.epochs} epochs, {metrics['wall_time_s']} s")
            print(f"test AUC {ours:.4f} (ground-truth model {best:.4f})", flush=True)
        kv.barrier()


if __name__ == "__main__":
    main()
