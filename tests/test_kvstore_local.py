"""The local kind: the public API in one process, with the same results and errors."""
import numpy as np
import pytest

import psframe
from conftest import require


def test_default_kind_outside_a_job_is_local(monkeypatch):
    for k in ("PSFRAME_SCHEDULER", "PSFRAME_KVSTORE", "PSFRAME_ROLE"):
        monkeypatch.delenv(k, raising=False)
    with psframe.create() as kv:
        assert (kv.type, kv.rank, kv.num_workers) == ("local", 0, 1)


def test_push_pull_pushpull_and_lists():
    kv = psframe.create("local")
    kv.init(["a", 3], [np.zeros(4), np.zeros((2, 2), dtype=np.int64)])
    kv.push("a", [np.ones(4), np.full(4, 2.0)])        # device list: summed
    out = np.empty(4)
    kv.pull("a", out)
    np.testing.assert_array_equal(out, [3.0] * 4)
    v = np.full((2, 2), 5, dtype=np.int64)
    kv.pushpull(3, v)
    np.testing.assert_array_equal(v, np.full((2, 2), 5))
    outs = [np.empty(4), np.empty(4)]
    kv.pull("a", outs)                                   # broadcast to every output
    assert all((o == 3.0).all() for o in outs)


def test_value_is_not_aliased_to_the_pushed_array():
    kv = psframe.create("local")
    kv.init("w", np.zeros(3))
    g = np.ones(3)
    kv.push("w", g)
    g[:] = 100
    out = np.empty(3)
    kv.pull("w", out)
    np.testing.assert_array_equal(out, [1.0] * 3)


def test_errors():
    kv = psframe.create("local")
    kv.init("w", np.zeros(3))
    with pytest.raises(psframe.DoubleInitError):
        kv.init("w", np.zeros(3))
    with pytest.raises(psframe.ShapeMismatchError, match=r"\(4,\).*\(3,\)"):
        kv.push("w", np.zeros(4))
    with pytest.raises(psframe.DTypeMismatchError):
        kv.push("w", np.zeros(3, dtype=np.float32))
    with pytest.raises(psframe.UninitializedKeyError, match="'x'"):
        kv.pull("x", np.zeros(3))
    with pytest.raises(psframe.UnsupportedDTypeError):
        kv.init("s", np.zeros(3, dtype=np.complex64))
    with pytest.raises(psframe.ConfigError):
        kv.init(True, np.zeros(1))
    with pytest.raises(psframe.ConfigError, match="unknown kvstore kind"):
        psframe.create("nccl")
    with pytest.raises(psframe.ConfigError, match="psframe-launch"):
        psframe.create("dist_sync", config=psframe.config.Config())


def test_torch_tensors_are_accepted():
    try:
        import torch
    except ImportError:
        torch = None
    require(torch is not None, "the torch package")
    kv = psframe.create("local")
    kv.init("t", torch.zeros(3, dtype=torch.float32))
    kv.push("t", torch.ones(3))
    out = torch.empty(3)
    kv.pull("t", out)
    assert out.tolist() == [1.0, 1.0, 1.0]


def test_server_stats_like_the_dist_kinds():
    kv = psframe.create("local")
    kv.init("a", np.zeros(2))
    kv.push("a", np.ones(2))
    (stats,) = kv.server_stats()
    assert stats["pushes"] == [1] and stats["keys"] == 1
