"""psframe.torch pushing during backward (real scheduler, servers and workers): the weights equal
overlap-off bit for bit and a serial torch reference closely; the timeline shows pushes starting
before backward ends; CUDA gradients are copied on a side stream (only where a GPU exists)."""
import json
import os

import numpy as np
import pytest

from cluster import run_job
from conftest import optional_import, requires

torch = optional_import("torch")
needs_torch = pytest.fixture(autouse=True)(requires(torch, "the torch package"))

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "bin", "torch_overlap.py")
WORKERS = 2


def serial_reference():
    """Plain torch on one process: each step's gradient is the average over the workers of the
    sum of their two micro-batches' gradients (what every variant computes)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("torch_overlap_defs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)        # the worker script's definitions (its job runs under __main__)
    model = mod.Net()
    opt = torch.optim.SGD(model.parameters(), lr=mod.LR, momentum=0.9)
    params = list(model.parameters())
    for step in range(mod.STEPS):
        total = [torch.zeros_like(p) for p in params]
        for rank in range(WORKERS):
            for micro in range(2):
                model.zero_grad()
                x, y = mod.batch(rank, step, micro)
                ((model(x, step) - y) ** 2).mean().backward()
                for t, p in zip(total, params):
                    if p.grad is not None:
                        t += p.grad
        for t, p in zip(total, params):
            p.grad = t / WORKERS
        opt.step()
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("hierarchical", ["0", "1"])     # pushes straight to the servers, or via the host tier
def test_overlap_equals_overlap_off_bitwise(tmp_path, hierarchical):
    run_job(SCRIPT, WORKERS, 2, args=["equal", str(tmp_path)], env={"PSFRAME_HIERARCHICAL": hierarchical},
            timeout=240).check()
    ref = serial_reference()
    for variant in ("dist-no_sync", "dist-plain", "server-no_sync"):
        on = np.load(tmp_path / f"{variant}-on.npz")
        off = np.load(tmp_path / f"{variant}-off.npz")
        assert sorted(on.files) == sorted(ref)
        for k in ref:
            assert on[k].tobytes() == off[k].tobytes(), f"{variant}: {k} differs with overlap on"
            np.testing.assert_allclose(on[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=f"{variant}: {k}")
        # the unused parameter really moved only through its odd-step gradients and momentum
        assert not np.array_equal(on["unused.weight"], torch.nn.Linear(4, 4).weight.detach().numpy())


def test_timeline_shows_pushes_during_backward(tmp_path):
    path = str(tmp_path / "trace.json")
    run_job(SCRIPT, WORKERS, 1, args=["timeline"], env={"PSFRAME_TIMELINE": path, "PSFRAME_HIERARCHICAL": "0"},
            timeout=180).check()
    with open(str(tmp_path / "trace.worker-0.json")) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    backwards = sorted((e for e in events if e["name"] == "backward"), key=lambda e: e["ts"])
    pushes = sorted((e for e in events if e["cat"] == "pushpull" and "tl:" in e["name"]),
                    key=lambda e: e["ts"])
    assert len(backwards) == 3, backwards
    for bw in backwards:      # every step: a push starts while backward is still running
        end = bw["ts"] + bw["dur"]
        inside = [p for p in pushes if bw["ts"] <= p["ts"] < end]
        assert inside, f"no push started during the backward at {bw['ts']} .. {end}"
        # the last layer's bucket (6 layers x 20 ms of backward) leaves long before the end
        assert end - inside[0]["ts"] > 40_000, (bw, inside[0])


@pytest.mark.skipif(not (torch is not None and torch.cuda.is_available()), reason="needs a CUDA GPU")
def test_cuda_gradients_copied_on_side_stream():
    from psframe.torch.buckets import buckets
    layer = torch.nn.Linear(64, 300).cuda()
    (layer(torch.randn(5, 64, device="cuda")) ** 2).sum().backward()
    stream = torch.cuda.Stream()
    for b in buckets(list(layer.parameters()), "g", 1024):
        b.gather(stream)
        assert b.copied is not None          # the copy was queued on the side stream
        b.wait_copied()
        expect = np.concatenate([p.grad.detach().cpu().numpy().reshape(-1) for p in b.params])
        assert b.buf.tobytes() == expect.tobytes()


def test_overlap_bench_resnet50_model_has_resnet50_gradients():
    """examples/bench_torch_overlap.py --model resnet50: ResNet-50's 161 tensors, each with a
    dense gradient after one backward, met last tensor first (as backward meets the layers)."""
    import importlib.util
    path = os.path.join(os.path.dirname(HERE), "examples", "bench_torch_overlap.py")
    spec = importlib.util.spec_from_file_location("bench_torch_overlap", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model, x = mod.build("resnet50", 0)
    params = list(model.parameters())
    order = []
    for i, p in enumerate(params):
        p.register_post_accumulate_grad_hook(lambda p, i=i: order.append(i))
    model(x).backward()
    assert len(params) == 161 and sum(p.numel() for p in params) == 25_557_032
    assert all(p.grad is not None and bool((p.grad == 1).all()) for p in params)
    assert order == list(range(160, -1, -1))
