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


def test_plain_python_numbers_are_one_array():
    """A list of numbers is an array (not one value per device), a scalar a 0-d array; numbers
    pushed to a key take its dtype. Checked against numpy doing the same arithmetic."""
    kv = psframe.create("local")
    kv.init("b", [1.0, 2.0, 3.0])
    out = np.empty(3)
    kv.pull("b", out)
    np.testing.assert_array_equal(out, np.array([1.0, 2.0, 3.0]))
    kv.init("w", np.zeros(4, dtype=np.float32))
    kv.push("w", [1.0, 2.0, 3.0, 4.0])
    w = np.empty(4, dtype=np.float32)
    kv.pull("w", w)
    np.testing.assert_array_equal(w, np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32))
    kv.push("w", [np.full(4, 0.5, np.float32), np.full(4, 0.25, np.float32)])   # two devices
    kv.pull("w", w)
    np.testing.assert_array_equal(w, np.full(4, 0.75, dtype=np.float32))
    kv.init("s", 2.5)
    s = np.empty(())
    kv.pushpull("s", 0.5, out=s)
    assert s.shape == () and s == 0.5
    kv.init(["i", "j"], [[1, 2], 7])
    i, j = np.empty(2, dtype=np.int64), np.empty((), dtype=np.int64)
    kv.pull(["i", "j"], [i, j])
    assert i.tolist() == [1, 2] and int(j) == 7


def test_values_that_are_not_arrays_or_numbers_are_clear_type_errors():
    kv = psframe.create("local")
    kv.init("w", np.zeros(4))
    with pytest.raises(TypeError, match=r"push of key 'w': cannot use a str; pass a numpy"):
        kv.push("w", "1,2,3,4")
    with pytest.raises(TypeError, match=r"a list holding float, ndarray"):
        kv.push("w", [np.ones(4), 1.0])
    with pytest.raises(TypeError, match=r"pull of key 'w': out must be an array"):
        kv.pull("w", [0.0] * 4)
    with pytest.raises(TypeError, match=r"needs out="):
        kv.pushpull("w", [1.0] * 4)
    kv.init("i", np.zeros(2, dtype=np.int64))
    with pytest.raises(psframe.DTypeMismatchError, match="'i'"):
        kv.push("i", [0.5, 1.5])          # floats are not silently truncated into an int key
    with pytest.raises(psframe.errors.UnsupportedDTypeError, match=r"init of key 'flags': dtype bool"):
        kv.init("flags", np.array([True, False]))
    with pytest.raises(psframe.errors.UnsupportedDTypeError, match=r"push of key 'w': dtype complex128"):
        kv.push("w", np.zeros(4, dtype=complex))
