"""Train a small PyTorch CNN on scikit-learn's digits with ``psframe.torch`` (serial or cluster).

    python examples/train_torch.py --epochs 8                      # kind "local", 1 worker
    psframe-launch -n 4 -s 2 examples/train_torch.py --epochs 8    # "dist_sync", 4 workers
    ... examples/train_torch.py --server-side                      # servers run the optimizer

A plain torch loop; the two psframe lines are ``broadcast_parameters`` and the
``DistributedOptimizer`` wrapper (gradients averaged over the workers, then ``torch.optim.SGD``
steps on every worker). With ``--server-side`` the servers hold the weights and apply
``psframe.optim.SGD`` instead (``ServerOptimizer``). Data, options and outputs are those of
``train_mlp.py`` (shards written to ``--data`` on first use; ``--batch-size`` per worker;
``metrics.json`` + ``curves.png`` in ``--out``; last line ``final test accuracy: 0.XXXX``).
"""
import argparse
import os
import posixpath
import sys
import time

try:
    import torch
except ImportError:
    sys.exit("examples/train_torch.py needs PyTorch, which `make demo` does not install: run "
             "`pip install -e '.[torch]'` (torch==2.13.0) in psframe's environment, e.g. "
             "`.venv/bin/pip install -e '.[torch]'`")
from torch import nn

import psframe
import psframe.torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_mlp import has_data, load_all, save_outputs, write_digits  # noqa: E402


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 32 x 4 x 4
        nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))


def as_images(x):
    return torch.from_numpy(x).view(-1, 1, 8, 8)


def evaluate(model, x, y):
    with torch.no_grad():
        logits = model(as_images(x))
        y = torch.from_numpy(y)
        return (float(nn.functional.cross_entropy(logits, y)),
                float((logits.argmax(1) == y).float().mean()))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="demo-output/digits")
    ap.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// data")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16, help="per worker")
    ap.add_argument("--lr", type=float, default=0.8, help="peak learning rate for a global batch of 256")
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-side", action="store_true", help="servers apply the optimizer")
    ap.add_argument("--kvstore", default=None)
    ap.add_argument("--out", default="demo-output/torch")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)    # several workers share the cores
    opts = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    t0 = time.monotonic()
    with psframe.create(args.kvstore) as kv:
        lead = kv.rank == 0
        if lead and not has_data(args.data, opts):
            write_digits(args.data, storage_options=opts)
        kv.barrier()
        train = psframe.data.PartitionedDataset(posixpath.join(args.data, "train"),
                                                args.batch_size, seed=args.seed, drop_last=True,
                                                storage_options=opts)
        if lead:
            x_tr, y_tr = load_all(posixpath.join(args.data, "train"), opts)
            x_te, y_te = load_all(posixpath.join(args.data, "test"), opts)

        global_batch = args.batch_size * kv.num_workers
        schedule = psframe.optim.lr.Warmup(
            psframe.optim.lr.Cosine(psframe.optim.lr.scaled_lr(args.lr, global_batch),
                                    args.epochs * len(train)),
            int(args.warmup_epochs * len(train)))
        model = make_model(args.seed)
        if args.server_side:
            opt = psframe.torch.ServerOptimizer(model, kv, psframe.optim.SGD(
                momentum=args.momentum, lr_schedule=schedule))
        else:
            psframe.torch.broadcast_parameters(model, kv)                       # psframe line 1
            opt = psframe.torch.DistributedOptimizer(                           # psframe line 2
                torch.optim.SGD(model.parameters(), lr=schedule(0), momentum=args.momentum), kv)

        metrics = {"example": "train_torch", "kvstore": kv.type, "num_workers": kv.num_workers,
                   "server_side": args.server_side, "batch_size": args.batch_size,
                   "global_batch": global_batch, "steps_per_epoch": len(train), "epochs": [],
                   "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
        if lead:
            from tqdm import tqdm
            print(f"{kv.num_workers} worker(s), kvstore {kv.type}, global batch {global_batch}, "
                  f"{'server' if args.server_side else 'worker'}-side SGD", flush=True)
        step = batches = 0
        for epoch in range(args.epochs):
            train.set_epoch(epoch)
            model.train()
            bar = tqdm(train, total=len(train), desc=f"epoch {epoch + 1}/{args.epochs}",
                       leave=False, mininterval=1.0, file=sys.stderr) if lead else train
            for batch in bar:
                if not args.server_side:
                    for g in opt.param_groups:
                        g["lr"] = schedule(step)
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(as_images(batch["x"])),
                                                   torch.from_numpy(batch["y"]))
                loss.backward()
                opt.step()
                step += 1
                batches += 1
            if lead:
                model.eval()
                tl, ta = evaluate(model, x_tr, y_tr)
                vl, va = evaluate(model, x_te, y_te)
                for name, v in zip(("epochs", "train_loss", "train_acc", "test_loss", "test_acc"),
                                   (epoch + 1, tl, ta, vl, va)):
                    metrics[name].append(v)
                tqdm.write(f"epoch {epoch + 1:3d}  train loss {tl:.4f} acc {ta:.4f}  "
                           f"test loss {vl:.4f} acc {va:.4f}")
        print(f"rank {kv.rank}: trained on {batches} batches", flush=True)
        kv.barrier()
        if lead:
            metrics["server_pushes"] = [s["pushes"] for s in kv.server_stats()]
            metrics["wall_time_s"] = round(time.monotonic() - t0, 2)
            metrics["final_test_acc"] = metrics["test_acc"][-1] if metrics["test_acc"] else None
            save_outputs(args.out, metrics)
            print(f"metrics: {os.path.join(args.out, 'metrics.json')}")
            print(f"plot: {os.path.join(args.out, 'curves.png')}")
            print(f"final test accuracy: {metrics['final_test_acc']:.4f}", flush=True)
        kv.barrier()


if __name__ == "__main__":
    main()
