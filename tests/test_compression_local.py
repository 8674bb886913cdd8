"""``set_gradient_compression`` on the local kind: the same quantization and residual as a
one-worker dist job (so a serial run sees the same numerics), and the call's rules."""
import numpy as np
import pytest

import psframe
from psframe.errors import ConfigError


def test_local_2bit_values_follow_quantize_and_residual():
    kv = psframe.create("local")
    kv.set_gradient_compression({"type": "2bit", "threshold": 0.5})
    kv.init(["w", "n"], [np.zeros((2, 3), np.float32), np.zeros(3, np.int64)])
    out, nout = np.zeros((2, 3), np.float32), np.zeros(3, np.int64)
    residual = np.zeros((2, 3), np.float32)
    rng = np.random.default_rng(0)
    for _ in range(6):
        g = rng.standard_normal((2, 3)).astype(np.float32) * 0.4
        kv.pushpull(["w", "n"], [g, np.arange(3)], [out, nout])
        r = residual + g
        sent = np.where(r >= 0.5, 0.5, np.where(r <= -0.5, -0.5, 0)).astype(np.float32)
        residual = r - sent
        np.testing.assert_array_equal(out, sent)         # one worker: the value is its push
        np.testing.assert_array_equal(nout, np.arange(3))   # int keys are not compressed
    # 6 pushes of 6 float32 as one 2-bit word each, and of 3 int64 as they are
    assert kv.server_stats()[0]["bytes_in_wire"] == 6 * (4 + 3 * 8)


def test_local_fp16_rounds_each_push():
    kv = psframe.create("local")
    kv.set_gradient_compression({"type": "fp16"})
    kv.init("w", np.zeros(4))
    g = np.array([1 / 3, 1e-8, -2.5, 3.0])
    kv.push("w", g)
    out = np.zeros(4)
    kv.pull("w", out)
    np.testing.assert_array_equal(out, g.astype(np.float16).astype(np.float64))
    assert out[0] != g[0]


def test_local_none_turns_it_off_and_a_call_after_a_push_is_an_error():
    kv = psframe.create("local")
    kv.set_gradient_compression({"type": "2bit"})
    kv.set_gradient_compression({"type": "none"})      # before the first push: allowed
    kv.init("w", np.zeros(3, np.float32))
    kv.push("w", np.full(3, 0.1, np.float32))
    out = np.zeros(3, np.float32)
    kv.pull("w", out)
    np.testing.assert_array_equal(out, np.full(3, 0.1, np.float32))
    with pytest.raises(ConfigError, match="before the first push"):
        kv.set_gradient_compression({"type": "fp16"})
    with pytest.raises(ConfigError, match="not one of"):
        psframe.create("local").set_gradient_compression({"type": "topk"})


def test_local_big_key_round_trips_in_pieces_with_the_same_numerics():
    """A key above one piece (1M elements) is quantized piece by piece: the same values and
    residual as one whole-array quantization."""
    from psframe.compression import twobit
    kv = psframe.create("local")
    kv.set_gradient_compression({"type": "2bit", "threshold": 0.5})
    n = (1 << 20) + 1000
    kv.init("big", np.zeros(n, np.float32))
    residual, out = np.zeros(n, np.float32), np.zeros(n, np.float32)
    rng = np.random.default_rng(4)
    for _ in range(2):
        g = rng.standard_normal(n).astype(np.float32)
        want = twobit.dequantize(twobit.quantize(g, residual, 0.5), n, 0.5, "float32")
        kv.pushpull("big", g, out)
        np.testing.assert_array_equal(out, want)
