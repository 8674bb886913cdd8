"""Gradient compression against plain numpy / plain Python references: the 2bit code layout
bit for bit (MXNet's masks), quantize + residual step by step, MXNet's 2bit test sequence, fp16,
config validation, and the worker's per-entry residuals. No sockets."""
import math

import numpy as np
import pytest

from psframe import compression
from psframe.compression import fp16, twobit
from psframe.compression.spec import CompressionSpec
from psframe.errors import ConfigError, ProtocolError

POSBITS = (0xC0, 0x30, 0x0C, 0x03)     # element i % 4 sent as +threshold
NEGBITS = (0x80, 0x20, 0x08, 0x02)     # ... as -threshold


def ref_quantize(grad, residual, threshold):
    """``(sent, new_residual)`` of one push, in the key's dtype, written independently."""
    dtype = residual.dtype
    t = dtype.type(threshold)
    r = (residual + grad).astype(dtype)
    sent = np.where(r >= t, t, np.where(r <= -t, -t, dtype.type(0))).astype(dtype)
    return sent, (r - sent).astype(dtype)


def ref_pack(sent):
    """Bytes of ``sent`` (+t, -t, 0 per element) with MXNet's masks, one element at a time."""
    out = bytearray(4 * math.ceil(sent.size / 16))
    for i, v in enumerate(sent.reshape(-1).tolist()):
        if v > 0:
            out[i // 4] |= POSBITS[i % 4]
        elif v < 0:
            out[i // 4] |= NEGBITS[i % 4]
    return bytes(out)


def ref_unpack(data, size, threshold, dtype):
    out = np.zeros(size, dtype)
    for i in range(size):
        byte = data[i // 4]
        if byte & POSBITS[i % 4] == POSBITS[i % 4]:
            out[i] = threshold
        elif byte & POSBITS[i % 4] == NEGBITS[i % 4]:
            out[i] = -threshold
    return out


# -- 2bit: layout and quantization ---------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 3, 4, 15, 16, 17, 31, 32, 33, 100, 257])
def test_pack_matches_mxnet_masks_and_pads_to_words(size):
    rng = np.random.default_rng(size)
    grad = rng.uniform(-1.5, 1.5, size).astype(np.float32)
    residual = np.zeros(size, np.float32)
    packed = twobit.quantize(grad, residual, 0.5)
    sent, _ = ref_quantize(grad, np.zeros(size, np.float32), 0.5)
    assert packed.dtype == np.uint8 and packed.size == 4 * math.ceil(size / 16)
    assert packed.tobytes() == ref_pack(sent)
    assert CompressionSpec("2bit", 0.5).wire_nbytes(size) == packed.size


def test_every_byte_dequantizes_as_mxnet_does():
    data = np.arange(256, dtype=np.uint8).repeat(4)    # 1024 bytes = 4096 elements
    got = twobit.dequantize(data, 4096, 0.75, "float32")
    np.testing.assert_array_equal(got, ref_unpack(data.tobytes(), 4096, 0.75, np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_quantize_with_residual_matches_numpy_over_many_pushes(dtype):
    rng = np.random.default_rng(7)
    size, threshold = 1000, 0.3
    residual = np.zeros(size, dtype)
    ref_res = np.zeros(size, dtype)
    for _ in range(12):
        grad = rng.standard_normal(size).astype(dtype) * dtype_scale(dtype)
        packed = twobit.quantize(grad, residual, threshold)
        sent, ref_res = ref_quantize(grad, ref_res, threshold)
        np.testing.assert_array_equal(residual, ref_res)
        assert packed.tobytes() == ref_pack(sent)
        np.testing.assert_array_equal(twobit.dequantize(packed, size, threshold, dtype), sent)


def dtype_scale(dtype):
    return np.dtype(dtype).type(0.4)


def test_big_random_gradients_round_trip_exactly():
    """Sizes of MXNet's test keys: vectorised reference, whole arrays compared bit for bit."""
    rng = np.random.default_rng(3)
    for shape in [(2, 3), (1211, 1211)]:
        size = int(np.prod(shape))
        residual, ref_res = np.zeros(size, np.float32), np.zeros(size, np.float32)
        for _ in range(3):
            grad = rng.random(size, dtype=np.float32)
            sent, ref_res = ref_quantize(grad, ref_res, 0.5)
            got = twobit.dequantize(twobit.quantize(grad, residual, 0.5), size, 0.5, "float32")
            np.testing.assert_array_equal(got, sent)
            np.testing.assert_array_equal(residual, ref_res)


def test_thresholds_are_inclusive_and_zero_gradients_send_zero():
    grad = np.array([0.5, -0.5, 0.4999, -0.4999, 0.0, 2.0], np.float32)
    res = np.zeros(6, np.float32)
    out = twobit.dequantize(twobit.quantize(grad, res, 0.5), 6, 0.5, "float32")
    np.testing.assert_array_equal(out, [0.5, -0.5, 0, 0, 0, 0.5])
    np.testing.assert_array_equal(res, np.array([0, 0, 0.4999, -0.4999, 0, 1.5], np.float32))


def test_dequantize_rejects_a_wrong_length():
    with pytest.raises(ValueError, match="8 bytes"):
        twobit.dequantize(np.zeros(4, np.uint8), 17, 0.5, "float32")


# -- MXNet's dist_sync 2bit sequence (4 workers, rescale_grad 2, weight += rescale * sum) ---
WORKERS, RATE, THRESHOLD = 4, 2.0, 0.5


def simulate_job(compressors, key, shape, pushes, weight):
    """Every worker pushes each gradient; the servers decode, sum in rank order and apply
    MXNet's test optimizer (``weight += rescale_grad * sum``); returns the weight per step."""
    seen = []
    size = int(np.prod(shape))
    for value in pushes:
        grad = np.full(size, value, np.float32)
        total = None
        for comp in compressors:
            wire = comp.encode(key, size, grad)
            part = compression.decode(comp.spec, "float32", shape, wire).reshape(-1)
            total = part.copy() if total is None else total + part
        weight = weight + np.float32(RATE) * total
        seen.append(weight.copy())
    return seen


@pytest.mark.parametrize("shape", [(2, 3), (1211, 1211), (1200, 1200)])
def test_mxnet_residual_sequence(shape):
    spec = compression.from_user({"type": "2bit", "threshold": THRESHOLD})
    workers = [compression.GradientCompressor(spec) for _ in range(WORKERS)]
    pushes = [0.4, THRESHOLD - 0.4, 0.2, THRESHOLD - 0.2, THRESHOLD]
    seen = simulate_job(workers, "k", shape, pushes, np.zeros(int(np.prod(shape)), np.float32))
    step = THRESHOLD * RATE * WORKERS          # MXNet's curval increment
    for got, want in zip(seen, [0, step, step, 2 * step, 3 * step]):
        assert (got == want).all()
    for w in workers:                          # "residual is 0 now"
        assert not w.residual("k", int(np.prod(shape)), np.zeros(1, np.float32)).any()


# -- fp16 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fp16_sum_is_the_sum_of_rounded_pushes(dtype):
    rng = np.random.default_rng(11)
    spec = compression.from_user({"type": "fp16"})
    comp = compression.GradientCompressor(spec)
    pushes = [rng.standard_normal(333).astype(dtype) * 100 for _ in range(4)]
    total = sum(compression.decode(spec, dtype, (333,), comp.encode("k", 333, g)) for g in pushes)
    want = sum(g.astype(np.float16).astype(dtype) for g in pushes)
    assert total.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(total, want)
    assert comp.encode("k", 333, pushes[0]).nbytes == spec.wire_nbytes(333) == 666
    with pytest.warns(RuntimeWarning, match="overflow"):      # beyond float16's range: inf
        assert fp16.decode(fp16.encode(np.float32([65504.0, 1e6])), "float32")[1] == np.inf


# -- the worker's residuals -----------------------------------------------------------------
def test_parts_of_a_key_keep_their_own_slice_of_its_residual():
    """A key cut in parts compresses each part with its slice: the same bits and residual as
    the whole key compressed at once (parts padded separately)."""
    rng = np.random.default_rng(5)
    spec = compression.from_user({"type": "2bit", "threshold": 0.25})
    whole, parted = compression.GradientCompressor(spec), compression.GradientCompressor(spec)
    bounds = [(0, 37), (37, 80), (80, 100)]
    for _ in range(5):
        g = rng.standard_normal(100).astype(np.float32) * 0.2
        full = compression.roundtrip(whole, "k", 100, g)
        pieces = [compression.roundtrip(parted, "k", 100, g[a:b], a) for a, b in bounds]
        np.testing.assert_array_equal(np.concatenate(pieces), full)
    np.testing.assert_array_equal(parted.residual("k", 100, g), whole.residual("k", 100, g))


def test_int_and_same_dtype_pushes_are_not_compressed():
    two, half = CompressionSpec("2bit", 0.5), CompressionSpec("fp16")
    assert two.applies_to("float16") and two.applies_to("float64")
    assert not two.applies_to("int32") and not two.applies_to("int64")
    assert half.applies_to("float32") and not half.applies_to("float16")


# -- config ---------------------------------------------------------------------------------
def test_user_configs():
    assert compression.from_user({"type": "2bit", "threshold": 1}) == CompressionSpec("2bit", 1.0)
    assert compression.from_user({"type": "2bit"}) == CompressionSpec("2bit", 0.5)   # MXNet default
    assert compression.from_user({"type": "fp16"}) == CompressionSpec("fp16")
    assert compression.from_user({"type": "none"}) is None
    spec = CompressionSpec("2bit", 0.125)
    assert compression.from_wire(spec.to_wire()) == spec


@pytest.mark.parametrize("bad, words", [
    ("2bit", "must be a dict"),
    ({"type": "1bit"}, "'1bit' is not one of"),
    ({"type": "2bit", "threshold": 0}, "above 0"),
    ({"type": "2bit", "threshold": float("nan")}, "finite"),
    ({"type": "2bit", "threshold": True}, "finite number"),
    ({"type": "2bit", "treshold": 0.5}, "takes no treshold"),
    ({"type": "fp16", "threshold": 0.5}, "takes no threshold"),
])
def test_bad_user_configs_name_the_problem(bad, words):
    with pytest.raises(ConfigError, match=words):
        compression.from_user(bad)


@pytest.mark.parametrize("bad", [None, "2bit", {"type": "none"}, {"type": "2bit", "threshold": -1},
                                 {"type": "fp16", "x": 1}])
def test_bad_wire_configs_are_protocol_errors(bad):
    with pytest.raises(ProtocolError, match="compression"):
        compression.from_wire(bad)


# -- cupy: the same bits on a device ------------------------------------------------------------
def _cupy_with_device():
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:
        return None


def test_cupy_quantize_matches_numpy():
    cupy = _cupy_with_device()
    if cupy is None:
        pytest.skip("no GPU: cupy with a CUDA device is needed")
    rng = np.random.default_rng(2)
    spec = compression.from_user({"type": "2bit", "threshold": 0.5})
    host, dev = compression.GradientCompressor(spec), compression.GradientCompressor(spec)
    for _ in range(3):
        g = rng.standard_normal(1001).astype(np.float32)
        wire_host = host.encode("k", 1001, g)
        wire_dev = dev.encode("k", 1001, cupy.asarray(g))
        assert type(wire_dev) is np.ndarray and wire_dev.tobytes() == wire_host.tobytes()
    np.testing.assert_array_equal(dev.residual("k", 1001, cupy.zeros(1, np.float32)).get(),
                                  host.residual("k", 1001, np.zeros(1, np.float32)))
    packed = cupy.asarray(wire_host)
    np.testing.assert_array_equal(twobit.dequantize(packed, 1001, 0.5, "float32").get(),
                                  twobit.dequantize(wire_host, 1001, 0.5, "float32"))


def test_reused_scratch_gives_the_same_bits_for_shrinking_and_growing_sizes():
    """Temporaries are reused across calls: a smaller call after a bigger one must still pad
    its last word with zeros."""
    rng = np.random.default_rng(9)
    scratch = twobit.Scratch()
    for size in [100, 17, 1, 250, 33]:
        grad = rng.uniform(-2, 2, size).astype(np.float32)
        res_a, res_b = np.zeros(size, np.float32), np.zeros(size, np.float32)
        assert (twobit.quantize(grad, res_a, 0.5, scratch).tobytes()
                == twobit.quantize(grad, res_b, 0.5).tobytes() == ref_pack(ref_quantize(grad, np.zeros(size, np.float32), 0.5)[0]))
        np.testing.assert_array_equal(res_a, res_b)
