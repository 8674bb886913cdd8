"""The pure encode/decode pair: round trips and every validation rule, no sockets."""
import msgpack
import numpy as np
import pytest

from psframe.errors import ProtocolError
from psframe.protocol import PROTOCOL_VERSION, ArrayDesc, Command, codec


def test_round_trip_arrays_and_body():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([2 ** 40 + 1], dtype=np.int64)
    descs = [ArrayDesc("w", 0, "float32", (3, 4), 5), ArrayDesc(7, 1, "int64", (1,), 0)]
    frames = codec.encode(Command.PUSH, 9, "worker:1", descs, [a, b], body={"x": 1})
    msg = codec.decode(frames)
    assert (msg.cmd, msg.id, msg.sender, msg.body) == (Command.PUSH, 9, "worker:1", {"x": 1})
    assert msg.arrays == descs
    np.testing.assert_array_equal(codec.as_array(msg.arrays[0], msg.buffers[0]), a)
    assert codec.as_array(msg.arrays[1], msg.buffers[1])[0] == 2 ** 40 + 1


def test_sizes_are_64_bit():
    d = ArrayDesc("big", 0, "float64", (2 ** 31, 4))
    assert d.nbytes == 2 ** 31 * 4 * 8
    header = codec.decode_header(codec.encode_header(Command.PULL, 1, "worker:0", [d]))
    assert header.arrays[0].shape == (2 ** 31, 4)


def _header(**over):
    h = {"v": PROTOCOL_VERSION, "cmd": "push", "id": 1, "sender": "worker:0",
         "arrays": [["k", 0, "float32", [2], 1]]}
    h.update(over)
    return msgpack.packb(h)


@pytest.mark.parametrize("header, field", [
    (b"\xc1garbage", "not msgpack"),
    (msgpack.packb([1, 2]), "not a map"),
    (_header(v=99), "version"),
    (_header(cmd="rm -rf"), "cmd"),
    (_header(arrays=[["k", 0, "object", [2], 1]]), "dtype"),
    (_header(arrays=[["k", 0, "float32", [-1], 1]]), "shape"),
    (_header(arrays=[[1.5, 0, "float32", [2], 1]]), "key"),
    (_header(arrays=[["k", 0, "float32", [2]]]), "arrays[0]"),
    (_header(arrays="x"), "arrays"),
])
def test_malformed_headers_name_the_field(header, field):
    with pytest.raises(ProtocolError, match="malformed message") as info:
        codec.decode([header, b"\0" * 8])
    assert field in str(info.value)


def test_declared_size_must_match_frame():
    with pytest.raises(ProtocolError, match="declares 8 bytes.*frame has 7"):
        codec.decode([_header(), b"\0" * 7])
    with pytest.raises(ProtocolError, match="2 array frames follow but the header declares 1"):
        codec.decode([_header(), b"\0" * 8, b"\0" * 8])


def test_header_rejects_bin_and_ext_payloads():
    raw = msgpack.packb({"v": PROTOCOL_VERSION, "cmd": "push", "blob": b"\0" * 100}, use_bin_type=True)
    with pytest.raises(ProtocolError):
        codec.decode([raw])


def test_errors_cross_the_wire_by_name_with_their_facts():
    from psframe.errors import ShapeMismatchError, RemoteError, from_wire, to_wire
    name, message, attrs = to_wire(ShapeMismatchError("w", (2,), (3,)))
    exc = from_wire(name, message, msgpack.unpackb(msgpack.packb(attrs)))
    assert isinstance(exc, ShapeMismatchError) and isinstance(exc, ValueError)
    assert (exc.key, exc.expected, exc.actual) == ("w", (2,), (3,)) and str(exc) == message
    assert type(from_wire("SystemExit", "no")) is RemoteError     # only whitelisted names


def test_a_local_unix_socket_is_private_and_reachable_only_while_it_exists():
    import os
    import stat

    import zmq

    from psframe.transport import addresses
    address = addresses.new_local()
    directory = os.path.dirname(address[len("ipc://"):])
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700    # no other user gets in
    assert not addresses.local_reachable(address)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(address)
        assert addresses.local_reachable(address)
        # another network namespace's tag is never taken for this machine's
        assert not addresses.local_reachable(address.replace("/psframe-n", "/psframe-nx"))
        sock.close(0)
    finally:
        ctx.term()
        addresses.remove_local(address)       # what a server does when it ends
    assert not os.path.exists(directory)
    assert not addresses.local_reachable(address)
    assert not addresses.local_reachable("tcp://127.0.0.1:9")
