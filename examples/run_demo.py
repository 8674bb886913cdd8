"""``make demo``: train examples/train_mlp.py on a local 4-worker / 2-server cluster.

    .venv/bin/python examples/run_demo.py [--epochs 10] [--out demo-output]

Writes the digits shards to ``demo-output/digits`` on first use, runs
``psframe-launch -n 4 -s 2 examples/train_mlp.py ...``, and prints where the plot and the metrics
are. Exits non-zero if the job fails or the test accuracy is below 95%.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def launcher():
    """The psframe-launch next to this interpreter (the venv's), else the one on PATH."""
    exe = os.path.join(os.path.dirname(sys.executable), "psframe-launch")
    return exe if os.path.exists(exe) else shutil.which("psframe-launch")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="demo-output")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--servers", type=int, default=2)
    args = ap.parse_args()

    sys.path.insert(0, HERE)
    import train_mlp
    data, out = os.path.join(args.out, "digits"), os.path.join(args.out, "mlp")
    if not train_mlp.has_data(data):
        print(f"writing the digits dataset (scikit-learn) as shards to {data}/")
        train_mlp.write_digits(data)
    exe = launcher()
    if exe is None:
        sys.exit("psframe-launch not found: install psframe first (`make install`)")
    cmd = [exe, "-n", str(args.workers), "-s", str(args.servers),
           os.path.join(HERE, "train_mlp.py"), "--data", data, "--out", out,
           "--epochs", str(args.epochs), "--batch-size", "16"]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    code = subprocess.call(cmd)
    elapsed = time.monotonic() - t0
    if code != 0:
        sys.exit(f"the training job failed (exit status {code})")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    acc = metrics["final_test_acc"]
    print(f"\n{metrics['num_workers']} workers, {args.servers} servers: test accuracy {acc:.4f} "
          f"after {len(metrics['epochs'])} epochs in {elapsed:.1f}s (job wall time)")
    print(f"plot:    {os.path.abspath(os.path.join(out, 'curves.png'))}")
    print(f"metrics: {os.path.abspath(os.path.join(out, 'metrics.json'))}")
    if acc < 0.95:
        sys.exit(f"test accuracy {acc:.4f} is below 0.95")
    print(next_steps())


def next_steps():
    """How to use this installation from a shell: nothing of it is on PATH until the
    environment it went into is activated."""
    bindir = os.path.dirname(sys.executable)
    rel = os.path.relpath(bindir)
    bindir = rel if not rel.startswith("..") else bindir
    if sys.prefix == sys.base_prefix:     # not a venv: installed into this Python itself
        return f"\npsframe is installed for {sys.executable}; psframe-launch is in {bindir}/"
    return (f"\npsframe is installed in the virtual environment {os.path.dirname(bindir) or '.'}/, "
            f"not on your PATH. To use it from your shell:\n"
            f"  . {bindir}/activate                      # then: psframe-launch, python -c 'import psframe'\n"
            f"or run {bindir}/psframe-launch and {bindir}/python directly.\n"
            f"examples/train_torch.py also needs torch: {bindir}/pip install -e '.[torch]'")


if __name__ == "__main__":
    main()
