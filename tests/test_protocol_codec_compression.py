"""Compressed pushes on the wire: the header's compression map, the per-array entry, declared
sizes against frame sizes, and decoding back to the key's dtype. No sockets."""
import msgpack
import numpy as np
import pytest

from psframe import compression
from psframe.errors import ProtocolError
from psframe.protocol import PROTOCOL_VERSION, ArrayDesc, Command, codec

TWO_BIT = compression.from_user({"type": "2bit", "threshold": 0.5})
FP16 = compression.from_user({"type": "fp16"})


def test_round_trip_of_a_mixed_push():
    """A 2bit float32 key beside an int key that travels as it is."""
    grad = np.array([[0.7, -0.6, 0.1], [0.0, 0.5, -0.49]], np.float32)
    comp = compression.GradientCompressor(TWO_BIT)
    wire = comp.encode("w", 6, grad.reshape(-1))
    ints = np.arange(3, dtype=np.int64)
    descs = [ArrayDesc("w", 0, "float32", (2, 3), 4, TWO_BIT), ArrayDesc("n", 0, "int64", (3,), 4)]
    msg = codec.decode(codec.encode(Command.PUSH, 3, "worker:1", descs, [wire, ints], compression=TWO_BIT))
    assert msg.arrays == descs and msg.arrays[0].compression == TWO_BIT
    assert msg.arrays[1].compression is None
    assert msg.arrays[0].wire_nbytes == 4 and msg.arrays[0].nbytes == 24
    got = codec.as_array(msg.arrays[0], msg.buffers[0])
    np.testing.assert_array_equal(got, [[0.5, -0.5, 0], [0, 0.5, 0]])
    assert got.dtype == np.float32 and got.flags.writeable
    np.testing.assert_array_equal(codec.as_array(msg.arrays[1], msg.buffers[1]), ints)


def test_fp16_frame_decodes_to_the_key_dtype():
    grad = np.linspace(-3, 3, 10)            # float64 key
    desc = ArrayDesc("w", 2, "float64", (10,), 1, FP16)
    msg = codec.decode(codec.encode(Command.PUSHPULL, 1, "worker:0", [desc], [grad.astype(np.float16)],
                                    compression=FP16))
    got = codec.as_array(msg.arrays[0], msg.buffers[0])
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, grad.astype(np.float16).astype(np.float64))


def _frames(arrays, compression_field, cmd="push", nbytes=4):
    header = {"v": PROTOCOL_VERSION, "cmd": cmd, "id": 1, "sender": "worker:0", "arrays": arrays}
    if compression_field is not None:
        header["compression"] = compression_field
    return [msgpack.packb(header), b"\0" * nbytes]


@pytest.mark.parametrize("arrays, field, cmd, nbytes, words", [
    ([["k", 0, "float32", [17], 1, "2bit"]], {"type": "2bit", "threshold": 0.5}, "push", 4,
     "declares 8 bytes"),
    ([["k", 0, "float32", [16], 1, "2bit"]], {"type": "2bit", "threshold": 0.5}, "push", 64,
     "declares 4 bytes"),
    ([["k", 0, "float32", [16], 1, "2bit"]], None, "push", 4, "no compression field"),
    ([["k", 0, "float32", [16], 1, "fp16"]], {"type": "2bit", "threshold": 0.5}, "push", 32,
     "message's is '2bit'"),
    ([["k", 0, "int32", [16], 1, "2bit"]], {"type": "2bit", "threshold": 0.5}, "push", 4, "compresses only"),
    ([["k", 0, "float16", [2], 1, "fp16"]], {"type": "fp16"}, "push", 4, "compresses only"),
    ([["k", 0, "float32", [16], 1, "2bit"]], {"type": "2bit", "threshold": -1}, "push", 4, "threshold"),
    ([["k", 0, "float32", [16], 1, "2bit"]], {"type": "3bit"}, "push", 4, "compression"),
    ([["k", 0, "float32", [16], 1]], {"type": "fp16"}, "init", 64, "only pushed gradients"),
])
def test_bad_compressed_messages_name_the_field(arrays, field, cmd, nbytes, words):
    with pytest.raises(ProtocolError, match=words):
        codec.decode(_frames(arrays, field, cmd, nbytes))


def test_pull_meta_cannot_name_compression():
    body = {"meta": [["k", 0, "float32", [16], 1, "2bit"]]}
    with pytest.raises(ProtocolError, match="no compression field"):
        codec.decode_meta(body)
