"""Fuzzing the codec with structured mutations of valid messages: whatever arrives, decoding
and the checks a service runs either succeed or raise a PSError, never anything else."""
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psframe.errors import ProtocolError, PSError, RefusedError
from psframe.protocol import PROTOCOL_VERSION, ArrayDesc, Command, codec

VALID = [
    codec.encode(Command.PUSH, 3, "worker:1", [ArrayDesc("w", 0, "float32", (2, 3), 4)],
                 [bytes(24)]),
    codec.encode(Command.PULL, 4, "worker:0", body={"meta": [["w", 1, "float64", [5], 2]]}),
    codec.encode(Command.INIT, 5, "worker:0", [ArrayDesc(7, 0, "int64", (3,), 0)], [bytes(24)],
                 body={"sync": True, "groups": [[["a", [1]], ["b", [2]]]]}),
    codec.encode(Command.REGISTER, 1, "server:0", body={"role": "server", "rank": 0, "host": "h"}),
]

# anything msgpack can carry, including the types that broke the codec (lists/maps as keys)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 64 - 1), st.floats(),
                    st.text(max_size=20), st.binary(max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
FIELDS = ("v", "cmd", "id", "sender", "arrays", "body")
SENDERS = st.one_of(st.sampled_from(["worker:²", "worker:٣", "worker:+1", "worker:01", "worker:",
                                     "server:0", "worker:1", "scheduler", "worker:" + "9" * 5000]),
                    st.text(max_size=12))


def _mutate_desc(draw, desc):
    if type(desc) is not list or len(desc) != 5:
        return draw(VALUES)
    desc = list(desc)
    i = draw(st.integers(0, 4))
    desc[i] = draw(st.one_of(VALUES, st.sampled_from([["float32"], {"a": 1}, [2 ** 40] * 9, -1])))
    return desc


def _nonempty_list(value):
    return type(value) is list and bool(value)


@st.composite
def mutated(draw):
    frames = list(draw(st.sampled_from(VALID)))
    header = msgpack.unpackb(frames[0], raw=False)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "drop", "desc", "body", "sender", "frames"]))
        if kind == "field":
            header[draw(st.sampled_from(FIELDS))] = draw(VALUES)
        elif kind == "drop":
            header.pop(draw(st.sampled_from(FIELDS)), None)
        elif kind == "desc" and _nonempty_list(header.get("arrays")):
            header["arrays"][0] = _mutate_desc(draw, header["arrays"][0])
        elif kind == "desc" and isinstance(header.get("body"), dict) and _nonempty_list(header["body"].get("meta")):
            header["body"]["meta"][0] = _mutate_desc(draw, header["body"]["meta"][0])
        elif kind == "body":
            body = header.get("body") if isinstance(header.get("body"), dict) else {}
            body[draw(st.sampled_from(["meta", "groups", "sync", "role", "rank", "keys"]))] = draw(VALUES)
            header["body"] = body
        elif kind == "sender":
            header["sender"] = draw(SENDERS)
        elif kind == "frames":
            frames = frames[:1] + [draw(st.binary(max_size=40))] * draw(st.integers(0, 2))
    try:
        frames[0] = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        frames[0] = draw(st.binary(max_size=60))
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(frames[0])))
        frames[0] = frames[0][:cut]
    return frames


def _serve(frames, identity):
    """What a service does with a message before acting on it."""
    msg = codec.decode(frames)
    codec.check_sender(msg, identity)
    codec.sender_rank(msg.sender, "worker", 4)
    codec.decode_meta(msg.body)
    codec.decode_groups(msg.body, len(msg.arrays) + len(codec.decode_meta(msg.body)))
    return msg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=mutated(), identity=st.sampled_from([None, "worker:1", "server:0"]))
def test_mutated_messages_raise_only_pserror(frames, identity):
    try:
        _serve(frames, identity)
    except PSError:
        pass


@pytest.mark.parametrize("field, value", [("cmd", ["push"]), ("cmd", {"a": 1})])
def test_unhashable_cmd_is_a_protocol_error(field, value):
    header = msgpack.packb({"v": PROTOCOL_VERSION, field: value, "sender": "worker:0"})
    with pytest.raises(ProtocolError, match="cmd"):
        codec.decode([header])


@pytest.mark.parametrize("dtype", [["float32"], {"float32": 1}])
def test_unhashable_dtype_is_a_protocol_error(dtype):
    header = msgpack.packb({"v": PROTOCOL_VERSION, "cmd": "push", "sender": "worker:0",
                            "arrays": [["k", 0, dtype, [1], 0]]})
    with pytest.raises(ProtocolError, match="dtype"):
        codec.decode([header, bytes(4)])


@pytest.mark.parametrize("sender", ["worker:²", "worker:٣", "worker:+1", "worker: 1", "worker:01",
                                    "worker:" + "9" * 5000, "Worker:1", "worker:1:2"])
def test_sender_rank_takes_only_ascii_digits(sender):
    with pytest.raises(ProtocolError, match="sender"):
        codec.sender_rank(sender, "worker", 10)


def test_sender_check_uses_the_authenticated_identity():
    msg = codec.decode(codec.encode(Command.PUSH, 1, "worker:1"))
    assert codec.check_sender(msg, "worker:1") == ("worker", 1)
    assert codec.check_sender(msg, None) == ("worker", 1)
    with pytest.raises(RefusedError, match="authenticated as 'worker:0'"):
        codec.check_sender(msg, "worker:0")
    shutdown = codec.decode(codec.encode(Command.DONE, 1, "server:0"))
    with pytest.raises(RefusedError, match="only worker"):
        codec.check_sender(shutdown, "server:0")
