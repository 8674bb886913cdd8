"""examples/train_mlp.py end to end: serial and under ``psframe-launch -n 4 -s 2`` (real processes),
plus its hand-written backward pass against torch autograd."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXAMPLES, LAUNCH, TIME_FACTOR, require
from s3_fixtures import aws_env, moto, storage_options  # noqa: F401  (moto: fixture)

EPOCHS = 10
GLOBAL_BATCH = 64
FINAL = re.compile(r"^final test accuracy: (0\.\d{4})$")


def run(cmd, cwd, timeout=120, env=None):
    """Run ``cmd`` in its own session; on a timeout the whole process group is killed."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PSFRAME_")}, **(env or {})}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout * TIME_FACTOR)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{cmd} did not finish in {timeout * TIME_FACTOR:g}s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def rank0_lines(out, launched):
    if not launched:
        return [l for l in out.splitlines() if l.strip()]
    prefix = "[worker 0@"
    return [l.split("] ", 1)[1] for l in out.splitlines() if l.startswith(prefix)]


def check_outputs(out_dir, lines, epochs=EPOCHS):
    m = FINAL.match(lines[-1].split("\r")[-1])
    assert m, f"last line of rank 0 is {lines[-1]!r}"
    for name in ("metrics.json", "curves.png"):
        assert os.path.getsize(os.path.join(out_dir, name)) > 0
    with open(os.path.join(out_dir, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert len(metrics["test_acc"]) == epochs
    assert float(m.group(1)) == pytest.approx(metrics["final_test_acc"], abs=1e-4)
    return metrics


@pytest.fixture(scope="module")
def serial(digits, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("serial"))
    out = run([sys.executable, os.path.join(EXAMPLES, "train_mlp.py"), "--data", digits,
               "--out", out_dir, "--epochs", str(EPOCHS), "--batch-size", str(GLOBAL_BATCH)],
              cwd=out_dir)
    return check_outputs(out_dir, rank0_lines(out, False))


def test_mlp_serial_reaches_95(serial):
    assert serial["kvstore"] == "local" and serial["num_workers"] == 1
    assert serial["final_test_acc"] >= 0.95, serial["test_acc"]


def test_mlp_cluster_matches_serial_and_every_worker_trains(digits, serial, tmp_path):
    out_dir = str(tmp_path)
    out = run([LAUNCH, "-n", "4", "-s", "2", os.path.join(EXAMPLES, "train_mlp.py"), "--data",
               digits, "--out", out_dir, "--epochs", str(EPOCHS),
               "--batch-size", str(GLOBAL_BATCH // 4)], cwd=out_dir)
    metrics = check_outputs(out_dir, rank0_lines(out, True))
    assert metrics["kvstore"] == "dist_sync" and metrics["num_workers"] == 4
    assert metrics["global_batch"] == serial["global_batch"] == GLOBAL_BATCH
    assert metrics["steps_per_epoch"] == serial["steps_per_epoch"]
    acc = metrics["final_test_acc"]
    assert acc >= 0.95, metrics["test_acc"]
    assert abs(acc - serial["final_test_acc"]) <= 0.01, (acc, serial["final_test_acc"])

    # Not a serial run in disguise: each of the 4 workers trained on its own batches, and every
    # server merged every worker's pushes (4 keys per step, spread over the 2 servers).
    steps = EPOCHS * metrics["steps_per_epoch"]
    for r in range(4):
        assert f"[worker {r}@127.0.0.1] rank {r}: trained on {steps} batches" in out, out[-3000:]
    pushes = metrics["server_pushes"]
    assert len(pushes) == 2 and all(len(p) == 4 for p in pushes)
    assert all(p[0] > 0 for p in pushes), pushes
    per_worker = [sum(server[w] for server in pushes) for w in range(4)]
    assert per_worker == [4 * steps] * 4, pushes


def test_mlp_cluster_2bit_compression_reaches_95(digits, tmp_path):
    """--compression 2bit, 4 workers x 2 servers: still >= 0.95, with at most 1/15 of float32's
    bytes pushed. Quantized updates come in bursts of +-threshold, so this run halves the peak
    learning rate and trains 15 epochs (docs/compression.md, "Convergence")."""
    out_dir, epochs = str(tmp_path), 15
    out = run([LAUNCH, "-n", "4", "-s", "2", os.path.join(EXAMPLES, "train_mlp.py"), "--data",
               digits, "--out", out_dir, "--epochs", str(epochs), "--batch-size", str(GLOBAL_BATCH // 4),
               "--compression", "2bit", "--threshold", "0.1", "--lr", "0.4"], cwd=out_dir)
    metrics = check_outputs(out_dir, rank0_lines(out, True), epochs=epochs)
    assert metrics["compression"] == "2bit"
    assert metrics["final_test_acc"] >= 0.95, metrics["test_acc"]
    pushes = 4 * epochs * metrics["steps_per_epoch"]
    float32_bytes = pushes * 4 * (64 * 128 + 128 + 128 * 10 + 10)
    assert sum(metrics["server_bytes_in_wire"]) * 15 <= float32_bytes, metrics["server_bytes_in_wire"]


def test_mlp_s3_data_written_on_first_use(moto, tmp_path):
    """--data s3://...: rank 0 writes the shards to an empty prefix, then both workers read them
    from the endpoint (each its own share: the store saw both ranks' User-Agents)."""
    import fsspec
    fsspec.filesystem("s3", **storage_options(moto.endpoint)).mkdir("psframe-examples")
    url = "s3://psframe-examples/digits"
    out_dir = str(tmp_path)
    moto.start_recording()
    out = run([LAUNCH, "-n", "2", "-s", "1", os.path.join(EXAMPLES, "train_mlp.py"), "--data", url,
               "--endpoint-url", moto.endpoint, "--out", out_dir, "--epochs", "2"],
              cwd=out_dir, env=aws_env(moto.endpoint))
    moto.stop_recording()
    lines = rank0_lines(out, True)
    assert f"writing the digits dataset to {url}" in lines
    check_outputs(out_dir, lines, epochs=2)
    reads = {r["agent"].split("psframe-data/")[-1].split()[0] for r in moto.requests()
             if r["method"] == "GET" and r["key"].startswith("digits/train/part-")
             and "psframe-data/" in r["agent"]}
    assert {"rank-0", "rank-1"} <= reads, reads


def test_mlp_backward_matches_autograd():
    try:
        import torch
    except ImportError:
        torch = None
    require(torch is not None, "the torch package")
    sys.path.insert(0, EXAMPLES)
    import train_mlp
    rng = np.random.default_rng(1)
    p = train_mlp.init_params(32, seed=3)
    p["b1"] += rng.standard_normal(32).astype(np.float32) * 0.1
    x = rng.random((20, 64), dtype=np.float32)
    y = rng.integers(0, 10, 20)
    loss, grads = train_mlp.loss_and_grads({k: v.copy() for k, v in p.items()}, x, y)

    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p.items()}
    h = torch.relu(torch.tensor(x, dtype=torch.float64) @ tp["w1"] + tp["b1"])
    ref = torch.nn.functional.cross_entropy(h @ tp["w2"] + tp["b2"], torch.tensor(y))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    for k in train_mlp.KEYS:
        np.testing.assert_allclose(grads[k], tp[k].grad.numpy(), rtol=1e-4, atol=1e-6)


def test_demo_trains_and_says_how_to_use_the_installation(tmp_path):
    """``make demo``'s script: the 4-worker / 2-server job, then how to reach psframe-launch and
    ``import psframe`` from a shell (nothing of the venv is on PATH after ``make demo``)."""
    root = os.path.dirname(EXAMPLES)
    out = run([sys.executable, os.path.join(EXAMPLES, "run_demo.py"), "--out", str(tmp_path)],
              cwd=root, timeout=240)
    assert re.search(r"4 workers, 2 servers: test accuracy 0\.9\d{3}", out), out[-3000:]
    bindir = os.path.relpath(os.path.dirname(sys.executable), root)
    if sys.prefix != sys.base_prefix:          # the tests run in a venv (make test: .venv)
        assert f"  . {bindir}/activate" in out and "not on your PATH" in out, out[-2000:]
    assert f"{bindir}/pip install -e '.[torch]'" in out, out[-2000:]
