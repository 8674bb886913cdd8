"""Gradient compression through real jobs (scheduler, servers and workers as processes): MXNet's
2bit test sequence over 4 workers x 2 servers with exactly its expected values, random gradients
against a plain numpy simulation of quantize + residual (fused, sliced, float64 and int keys;
dist_sync and dist_async), fp16 sums, and workers that disagree on the config."""
import inspect
import json
import math
import os

import numpy as np
import pytest

from cluster import ROOT, run_job
from psframe import sharding

pytestmark = pytest.mark.integration

BIN = os.path.join(ROOT, "tests", "bin")
TIME_FACTOR = float(os.environ.get("PSFRAME_TEST_TIME_FACTOR", "1"))


def simulate_2bit(grads, residual, threshold):
    """One push: ``(sent, residual)``, written out in the key's dtype (MXNet's rule)."""
    t = residual.dtype.type(threshold)
    r = (residual + grads).astype(residual.dtype)
    sent = np.where(r >= t, t, np.where(r <= -t, -t, 0)).astype(residual.dtype)
    return sent, r - sent


def test_mxnet_2bit_sequence_4_workers_2_servers(tmp_path):
    saved = tmp_path / "random.npz"
    job = run_job(os.path.join(BIN, "compression_mxnet.py"), num_workers=4, num_servers=2,
                  args=[saved], env={"PSFRAME_USER_MODULES": os.path.join(BIN, "mxnet_test_optimizer.py")},
                  timeout=150 * TIME_FACTOR).check()
    workers, rate, threshold = 4, 2.0, 0.5
    step = threshold * rate * workers          # MXNet's ``curval`` increment
    want = {"before": [0.0], "zero": [0.0], "residual0": [0.0], "residual1": [step],
            "residual2": [step], "residual3": [2 * step], "ones": [3 * step]}
    shapes = {"1000": (2, 3), "1200": (1211, 1211), "1300": (1200, 1200)}
    for rank, result in job.results().items():
        for k in shapes:
            assert result["seen"][k] == want, (rank, k)
        for k in ("1001", "1201", "1301"):
            assert result["seen"][k] == {"init": [1.0]}, (rank, k)
        # one round of pushes: 4 workers x every part's 2-bit words, against float32
        parts = [p for s in shapes.values()
                 for p in sharding.parts_of(-1 if math.prod(s) > 1_000_000 else 0, math.prod(s), 2, 4)]
        assert result["round_bytes"] == workers * sum(4 * math.ceil(p.size / 16) for p in parts)
        assert result["round_bytes"] * 15 <= workers * sum(4 * math.prod(s) for s in shapes.values())
    # random gradients: every worker's quantize + residual simulated here, summed in rank order
    got = np.load(saved)
    for j, (k, s) in enumerate({"1002": (2, 3), "1202": (1211, 1211), "1302": (1200, 1200)}.items()):
        weight = np.zeros(s, np.float32)
        residuals = [np.zeros(s, np.float32) for _ in range(workers)]
        for n in range(3):
            total = None
            for r in range(workers):
                grad = np.random.default_rng([j, n, r]).random(s, dtype=np.float32)
                sent, residuals[r] = simulate_2bit(grad, residuals[r], threshold)
                total = sent.copy() if total is None else total + sent
            weight = weight + total * np.float32(rate)
            np.testing.assert_array_equal(got[f"{k}@{n}"], weight, err_msg=f"key {k} step {n}")


RANDOM_JOB = r'''
import json, sys
import numpy as np
import psframe

kind, config, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
SHAPES = json.loads(sys.argv[4])
DTYPES = json.loads(sys.argv[5])
lr = float(sys.argv[6])
kv = psframe.create(kind)
kv.set_gradient_compression(config)
small = [k for k in SHAPES if k.startswith("s")]
kv.init(small, [np.zeros(SHAPES[k], DTYPES[k]) for k in small])       # one fusion group
rest = [k for k in SHAPES if k not in small and k != "i32"]
kv.init(rest, [np.zeros(SHAPES[k], DTYPES[k]) for k in rest])
kv.init("i32", np.zeros(SHAPES["i32"], DTYPES["i32"]))
if lr:
    kv.set_optimizer(psframe.optim.SGD(lr=lr))     # int keys: only with no optimizer
    del SHAPES["i32"]
saved = {}
for step in range(5):
    keys = list(SHAPES) if step != 2 else ["s1", "big"]    # step 2: a group member alone
    grads = [gradient(k, step, kv.rank) for k in keys]
    outs = [np.zeros(SHAPES[k], DTYPES[k]) for k in keys]
    if step % 2:
        kv.pushpull(keys, grads, outs)
    else:
        kv.push(keys, grads)
        if kind == "dist_sync":
            kv.pull(keys, outs)
    if kind == "dist_sync" and kv.rank == 0:
        saved.update({f"{k}@{step}": o for k, o in zip(keys, outs)})
kv.barrier()
outs = [np.zeros(SHAPES[k], DTYPES[k]) for k in SHAPES]
kv.pull(list(SHAPES), outs)
if kv.rank == 0:
    saved.update({f"{k}@final": o for k, o in zip(SHAPES, outs)})
    np.savez(out, **saved)
kv.close()
'''

SHAPES = {"s0": (7,), "s1": (3, 4), "s2": (9,), "s3": (16,), "s4": (33,), "big": (3001,),
          "d64": (50,), "i32": (9,)}
DTYPES = {**{k: "float32" for k in SHAPES}, "d64": "float64", "i32": "int32"}
STEPS = [list(SHAPES), list(SHAPES), ["s1", "big"], list(SHAPES), list(SHAPES)]


def gradient(k, step, rank):
    rng = np.random.default_rng([["s0", "s1", "s2", "s3", "s4", "big", "d64", "i32"].index(k), step, rank])
    if DTYPES[k] == "int32":
        return rng.integers(-5, 5, SHAPES[k]).astype(np.int32)
    return (rng.standard_normal(SHAPES[k]) * 0.3).astype(DTYPES[k])


def run_random_job(tmp_path, kind, config, workers=3, lr=0.0):
    script = tmp_path / "job.py"
    script.write_text("import numpy as np\n" + f"SHAPES = {SHAPES!r}\nDTYPES = {DTYPES!r}\n"
                      + inspect.getsource(gradient) + RANDOM_JOB)
    out = tmp_path / "values.npz"
    run_job(str(script), num_workers=workers, num_servers=2,
            args=[kind, json.dumps(config), out, json.dumps(SHAPES), json.dumps(DTYPES), lr],
            env={"PSFRAME_BIGARRAY_BOUND": "1000"}, timeout=90 * TIME_FACTOR).check()
    return np.load(out)


def encoded(config, residuals, k, grad):
    """What the servers receive from one worker's push of ``grad`` to key ``k``, decoded."""
    if DTYPES[k] == "int32":
        return grad
    if config["type"] == "fp16":
        return grad.astype(np.float16).astype(grad.dtype)
    sent, residuals[k] = simulate_2bit(grad, residuals[k], config["threshold"])
    return sent


@pytest.mark.parametrize("kind, config, lr", [
    ("dist_sync", {"type": "2bit", "threshold": 0.25}, 0.0),
    ("dist_async", {"type": "2bit", "threshold": 0.25}, 0.0),
    ("dist_sync", {"type": "fp16"}, 0.0),
    ("dist_sync", {"type": "2bit", "threshold": 0.25}, 0.5),     # SGD on the servers
])
def test_random_gradients_match_a_numpy_simulation(tmp_path, kind, config, lr):
    workers = 3
    got = run_random_job(tmp_path, kind, config, workers, lr)
    keys_run = [k for k in SHAPES if not (lr and k == "i32")]
    residuals = [{k: np.zeros(SHAPES[k], DTYPES[k]) for k in SHAPES} for _ in range(workers)]
    value = {k: np.zeros(SHAPES[k], DTYPES[k]) for k in SHAPES}
    for step, keys in enumerate(STEPS):
        for k in keys:
            if k not in keys_run:
                continue
            pushes = [encoded(config, residuals[r], k, gradient(k, step, r)) for r in range(workers)]
            total = pushes[0].copy()
            for p in pushes[1:]:          # the servers' rank order
                total = total + p
            if lr:                        # weight -= lr * sum (exact: multiples of 1/8)
                value[k] = value[k] - value[k].dtype.type(lr) * total
            else:
                value[k] = total if kind == "dist_sync" else value[k] + total
            if kind == "dist_sync":
                np.testing.assert_array_equal(got[f"{k}@{step}"], value[k], err_msg=f"{k} step {step}")
    for k in keys_run:
        # async: any arrival order gives the same sums (multiples of a power-of-two threshold)
        np.testing.assert_array_equal(got[f"{k}@final"], value[k], err_msg=f"{k} final")


DISAGREE = r'''
import sys
import numpy as np
import psframe
from psframe.errors import ConfigError

kv = psframe.create("dist_sync")
try:
    kv.set_gradient_compression({"type": "2bit", "threshold": 0.5 if kv.rank == 0 else 0.25})
except ConfigError as exc:
    print("RESULT " + __import__("json").dumps({"error": str(exc)}), flush=True)
kv.close()
'''


def test_workers_with_different_configs_all_get_a_clear_error(tmp_path):
    script = tmp_path / "disagree.py"
    script.write_text(DISAGREE)
    job = run_job(str(script), num_workers=2, num_servers=1, timeout=60 * TIME_FACTOR).check()
    for rank, result in job.results().items():
        assert "set_gradient_compression differs between workers" in result["error"], rank
        assert "'threshold': 0.25" in result["error"] and "'threshold': 0.5" in result["error"]
