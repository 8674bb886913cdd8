"""psframe.torch and examples/train_torch.py: accuracy under ``psframe-launch -n 4 -s 2``, and the
weights after the first distributed steps against a serial pure-torch run with the same global
batch (worker-side ``DistributedOptimizer`` and server-side ``ServerOptimizer``)."""
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from conftest import EXAMPLES, LAUNCH, optional_import, require, requires
from test_examples_mlp import check_outputs, rank0_lines, run

import psframe
import psframe.torch            # imports torch only when used

torch = optional_import("torch")
needs_torch = pytest.fixture(autouse=True)(requires(torch, "the torch package"))

STEPS, BATCH, WORKERS, LR, MOMENTUM = 5, 8, 4, 0.05, 0.9

# Each worker trains the CNN on its quarter of every global batch; rank r starts from other
# weights (seed r) so broadcast_parameters has something to do. Rank 0 saves the weights.
DRIVER = textwrap.dedent(f"""
    import json, sys
    import numpy as np, torch
    import psframe, psframe.torch
    from torch import nn
    sys.path.insert(0, {EXAMPLES!r})
    from train_torch import make_model
    torch.set_num_threads(1)
    data = np.load(sys.argv[1], allow_pickle=False)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    with psframe.create() as kv:
        lo, hi, result = kv.rank * {BATCH}, (kv.rank + 1) * {BATCH}, {{}}
        for variant in ("worker", "server"):
            model = make_model(seed=kv.rank)
            if variant == "worker":
                psframe.torch.broadcast_parameters(model, kv)
                opt = psframe.torch.DistributedOptimizer(
                    torch.optim.SGD(model.parameters(), lr={LR}, momentum={MOMENTUM}), kv)
            else:
                opt = psframe.torch.ServerOptimizer(
                    model, kv, psframe.optim.SGD(lr={LR}, momentum={MOMENTUM}))
            for s in range({STEPS}):
                gb = slice(s * {BATCH * WORKERS}, (s + 1) * {BATCH * WORKERS})
                xb, yb = x[gb][lo:hi], y[gb][lo:hi]
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
            if kv.rank == 0:
                np.savez(sys.argv[2] + "-" + variant + ".npz",
                         **{{k: v.numpy() for k, v in model.state_dict().items()}})
        kv.barrier()
        if kv.rank == 0:
            result["pushes"] = [s["pushes"] for s in kv.server_stats()]
            print("RESULT " + json.dumps(result), flush=True)
        kv.barrier()
""")


def reference(x, y, steps):
    """Serial pure torch: the same model, the full global batch per step."""
    sys.path.insert(0, EXAMPLES)
    from train_torch import make_model
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    gb = BATCH * WORKERS
    for s in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[s * gb:(s + 1) * gb]),
                                          y[s * gb:(s + 1) * gb]).backward()
        opt.step()
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_torch_cluster_reaches_95(digits, tmp_path):
    out_dir = str(tmp_path)
    out = run([LAUNCH, "-n", "4", "-s", "2", os.path.join(EXAMPLES, "train_torch.py"), "--data",
               digits, "--out", out_dir, "--epochs", "8", "--batch-size", "16"], cwd=out_dir,
              timeout=150)
    metrics = check_outputs(out_dir, rank0_lines(out, True), epochs=8)
    assert metrics["num_workers"] == 4 and metrics["kvstore"] == "dist_sync"
    assert metrics["final_test_acc"] >= 0.95, metrics["test_acc"]
    assert all(p > 0 for server in metrics["server_pushes"] for p in server)


def test_torch_first_steps_match_serial(tmp_path):
    require(os.path.exists(LAUNCH), "psframe-launch in the venv")
    from sklearn.datasets import load_digits
    xs, ys = load_digits(return_X_y=True)
    n = STEPS * BATCH * WORKERS
    x = (xs[:n] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = ys[:n].astype(np.int64)
    np.savez(tmp_path / "batches.npz", x=x, y=y)
    (tmp_path / "driver.py").write_text(DRIVER)
    out = run([LAUNCH, "-n", str(WORKERS), "-s", "2", str(tmp_path / "driver.py"),
               str(tmp_path / "batches.npz"), str(tmp_path / "weights")], cwd=str(tmp_path))
    ref = reference(torch.from_numpy(x), torch.from_numpy(y), STEPS)
    start = reference(torch.from_numpy(x), torch.from_numpy(y), 0)
    for variant in ("worker", "server"):
        with np.load(tmp_path / f"weights-{variant}.npz", allow_pickle=False) as got:
            assert sorted(got.files) == sorted(ref)
            for k in ref:
                assert not np.allclose(ref[k], start[k]), f"{k} did not move"
                np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-5,
                                           err_msg=f"{variant}-side {k}")
    result = json.loads([l for l in out.splitlines() if "RESULT " in l][-1].split("RESULT ", 1)[1])
    # Every worker pushed every step of every key (3 keys: fused convs, fc1 alone, fused rest;
    # worker-side and server-side each), to both servers.
    per_worker = [sum(server[w] for server in result["pushes"]) for w in range(WORKERS)]
    assert per_worker == [2 * 3 * STEPS] * WORKERS, result


def test_distributed_optimizer_local_is_plain_torch():
    """One worker (local kind): the wrapper steps exactly like the wrapped optimizer."""
    sys.path.insert(0, EXAMPLES)
    from train_torch import make_model
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    models = [make_model(seed=0), make_model(seed=0)]
    with psframe.create("local") as kv:
        psframe.torch.broadcast_parameters(models[0], kv)
        opts = [psframe.torch.DistributedOptimizer(
                    torch.optim.SGD(models[0].parameters(), lr=0.1, momentum=0.9), kv,
                    fusion_bytes=4096),
                torch.optim.SGD(models[1].parameters(), lr=0.1, momentum=0.9)]
        assert len(opts[0].buckets) == 5       # 2 large tensors alone, 3 fused runs
        for _ in range(3):
            for m, o in zip(models, opts):
                o.zero_grad()
                torch.nn.functional.cross_entropy(m(x), y).backward()
                o.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
