"""Pure encode/decode of psframe messages. No sockets, no state, never pickle.

A message is a list of frames::

    frame 0      msgpack map  {"v": PROTOCOL_VERSION, "cmd": "push", "id": 17, "sender": "worker:2",
                               "arrays": [[key, part, dtype, shape, step], ...],   # one per frame
                               "body": {...},                                      # small extras
                               "compression": {"type": "2bit", "threshold": 0.5}}  # pushes only
    frame 1..n   raw bytes of array i (C order), exactly prod(shape) * itemsize bytes

``key`` is an int or str, ``part`` the slice index of a key cut over servers (0 otherwise),
``step`` the push count the array belongs to. Sizes are Python ints, i.e. 64-bit on the wire.

A push or pushpull may compress its float arrays (gradient compression): the header then has a
``compression`` map, and each compressed array's entry a sixth element, the compression type
(``[key, part, dtype, shape, step, "2bit"]``). ``dtype`` and ``shape`` stay the key-part's own;
the frame holds ``prod(shape)`` float16 values (``fp16``) or ``4 * ceil(prod(shape) / 16)``
bytes of 2-bit codes (``2bit``, layout in ``psframe.compression.twobit``).
"""
import dataclasses
import re

import msgpack
import numpy as np

from .. import compression as compression_mod
from ..arrays import DTYPES
from ..errors import ProtocolError, RefusedError, to_wire
from .commands import COMMANDS, PROTOCOL_VERSION, SENDERS, Command

MAX_NDIM = 32
MAX_ELEMENTS = 2 ** 48   # per array: far above any real tensor, far below int64 overflow
_SENDER = re.compile(r"([a-z]+):(0|[1-9][0-9]{0,8})")   # ASCII digits only, no sign, no padding
ITEMSIZE = {name: np.dtype(name).itemsize for name in DTYPES}


class ArrayDesc:
    """What one array frame holds. A plain slotted class: thousands are built per call when a
    model's small keys travel together, so construction must be cheap. ``compression``: the
    ``CompressionSpec`` the frame is compressed with, or None."""
    __slots__ = ("key", "part", "dtype", "shape", "step", "compression")

    def __init__(self, key, part, dtype, shape, step=0, compression=None):
        self.key, self.part, self.dtype, self.shape, self.step = key, part, dtype, tuple(shape), step
        self.compression = compression

    def __eq__(self, other):
        return isinstance(other, ArrayDesc) and self.to_wire() == other.to_wire()

    def __repr__(self):
        return f"ArrayDesc({self.key!r}, {self.part}, {self.dtype!r}, {self.shape}, {self.step})"

    @property
    def nbytes(self):
        """Bytes of the array itself (``dtype`` x ``shape``)."""
        n = ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n

    @property
    def wire_nbytes(self):
        """Bytes of its frame: ``nbytes``, or fewer when compressed."""
        if self.compression is None:
            return self.nbytes
        size = 1
        for d in self.shape:
            size *= d
        return self.compression.wire_nbytes(size)

    def to_wire(self):
        if self.compression is not None:
            return [self.key, self.part, self.dtype, list(self.shape), self.step, self.compression.type]
        return [self.key, self.part, self.dtype, list(self.shape), self.step]


@dataclasses.dataclass
class Message:
    cmd: Command
    id: int = 0
    sender: str = ""
    arrays: list = dataclasses.field(default_factory=list)   # list[ArrayDesc]
    body: dict = dataclasses.field(default_factory=dict)
    buffers: list = dataclasses.field(default_factory=list)  # one per array (frames/memoryviews)


def encode_header(cmd, id=0, sender="", arrays=(), body=None, compression=None):
    """The msgpack header frame of a message (see module docstring). ``compression``: the
    ``CompressionSpec`` of the arrays whose descriptors name one."""
    header = {"v": PROTOCOL_VERSION, "cmd": Command(cmd).value, "id": id, "sender": sender,
              "arrays": [a.to_wire() for a in arrays]}
    if body:
        header["body"] = body
    if compression is not None:
        header["compression"] = compression.to_wire()
    return msgpack.packb(header, use_bin_type=True)


def encode(cmd, id=0, sender="", arrays=(), buffers=(), body=None, compression=None):
    """Frames of a message: the header, then ``buffers`` as they are (no copy here)."""
    if len(arrays) != len(buffers):
        raise ProtocolError(f"{len(arrays)} array descriptors but {len(buffers)} buffers")
    return [encode_header(cmd, id, sender, arrays, body, compression), *buffers]


def encode_error(id, sender, exc):
    """An error reply: the error crosses by whitelisted name, message and facts, never pickled."""
    name, message, attrs = to_wire(exc)
    return encode(Command.ERROR, id, sender, body={"name": name, "message": message, "attrs": attrs})


def _fail(field, why):
    raise ProtocolError(f"malformed message: {field} {why}")


def decode_header(frame):
    """Parse and validate a header frame; returns a Message without buffers.

    Raises:
        ProtocolError: naming the field that breaks the wire rules.
    """
    try:
        header = msgpack.unpackb(bytes(frame), raw=False, strict_map_key=False,
                                 max_bin_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"malformed message: header frame is not msgpack ({exc})") from None
    if not isinstance(header, dict):
        _fail("header", "is not a map")
    if type(header.get("v")) is not int or header.get("v") != PROTOCOL_VERSION:
        _fail("version", f"{header.get('v')!r} is not {PROTOCOL_VERSION}: peers run different "
                          f"psframe versions; install the same version everywhere")
    raw_cmd = header.get("cmd")
    cmd = COMMANDS.get(raw_cmd) if type(raw_cmd) is str else None
    if cmd is None:
        _fail("cmd", f"{header.get('cmd')!r} is not a known command")
    mid, sender, body = header.get("id", 0), header.get("sender", ""), header.get("body", {})
    if not isinstance(mid, int) or not isinstance(sender, str) or not isinstance(body, dict):
        _fail("id/sender/body", "have wrong types")
    raw_arrays = header.get("arrays", [])
    if not isinstance(raw_arrays, list):
        _fail("arrays", "is not a list")
    spec = None
    if "compression" in header:
        if cmd not in (Command.PUSH, Command.PUSHPULL):
            _fail("compression", f"on a {cmd.value!r} message: only pushed gradients are compressed")
        spec = compression_mod.from_wire(header["compression"])
    arrays = [decode_desc(i, a, spec) for i, a in enumerate(raw_arrays)]
    return Message(cmd=cmd, id=mid, sender=sender, arrays=arrays, body=body)


def decode_desc(i, raw, compression=None):
    """Validate one ``[key, part, dtype, shape, step(, compression type)]`` entry of a header
    -> ArrayDesc; ``compression`` is the message's spec (None: no entry may name one)."""
    if type(raw) is not list or len(raw) != 5:
        if type(raw) is list and len(raw) == 6:
            return _compressed_desc(i, raw, compression)
        _fail(f"arrays[{i}]", "is not [key, part, dtype, shape, step]")
    key, part, dtype, shape, step = raw
    if type(key) is not str and (type(key) is not int):
        _fail(f"arrays[{i}].key", f"{key!r} is not an int or str")
    if type(part) is not int or part < 0 or type(step) is not int or step < 0:
        _fail(f"arrays[{i}].part/step", "must be non-negative ints")
    if type(dtype) is not str or dtype not in ITEMSIZE:
        _fail(f"arrays[{i}].dtype", f"{dtype!r} is not one of {DTYPES}")
    if type(shape) is not list or len(shape) > MAX_NDIM:
        _fail(f"arrays[{i}].shape", f"{shape!r} is not a list of non-negative ints")
    extent = 1     # product of the non-zero dims: bounds what numpy is asked to lay out
    for d in shape:
        if type(d) is not int or d < 0:
            _fail(f"arrays[{i}].shape", f"{shape!r} is not a list of non-negative ints")
        extent *= max(d, 1)
    if extent > MAX_ELEMENTS:
        _fail(f"arrays[{i}].shape", f"{shape!r} spans more than 2**48 elements")
    return ArrayDesc(key, part, dtype, shape, step)


def _compressed_desc(i, raw, spec):
    """An entry naming its compression, checked against the header's and the key's dtype."""
    if spec is None:
        _fail(f"arrays[{i}]", f"names compression {raw[5]!r} but the message has no compression field")
    if raw[5] != spec.type:
        _fail(f"arrays[{i}]", f"names compression {raw[5]!r} but the message's is {spec.type!r}")
    desc = decode_desc(i, raw[:5])
    if not spec.applies_to(desc.dtype):
        _fail(f"arrays[{i}]", f"is {desc.dtype}: {spec.type} compresses only "
                              f"{', '.join(d for d in compression_mod.spec.FLOAT_DTYPES if spec.applies_to(d))}")
    desc.compression = spec
    return desc


def decode_meta(body, field="meta"):
    """Descriptors of arrays a request names without carrying them (pull, init by rank > 0),
    from ``body[field]``: a list of ``[key, part, dtype, shape, step]``."""
    raw = body.get(field, [])
    if type(raw) is not list:
        _fail(f"body.{field}", "is not a list of array descriptors")
    return [decode_desc(i, d) for i, d in enumerate(raw)]


def decode_groups(body, count):
    """Members of the fusion groups an init names, from ``body["groups"]``: one entry per
    array descriptor, ``None`` for a plain key or ``[[key, shape], ...]`` for a group."""
    raw = body.get("groups")
    if raw is None:
        return [None] * count
    if type(raw) is not list or len(raw) != count:
        _fail("body.groups", f"is not a list of {count} entries")
    out = []
    for i, entry in enumerate(raw):
        if entry is None:
            out.append(None)
            continue
        if type(entry) is not list or not entry:
            _fail(f"body.groups[{i}]", "is not a non-empty list of [key, shape]")
        members = []
        for j, member in enumerate(entry):
            if type(member) is not list or len(member) != 2:
                _fail(f"body.groups[{i}][{j}]", "is not [key, shape]")
            desc = decode_desc(j, [member[0], 0, "float32", member[1], 0])   # validates key and shape
            members.append((desc.key, desc.shape))
        out.append(members)
    return out


def parse_sender(sender):
    """``"worker:3"`` -> ``("worker", 3)``: a lower-case role, a colon and a rank in ASCII
    digits (no sign, no leading zero, at most 9 digits).

    Raises:
        ProtocolError: anything else (``"worker:²"``, ``"worker:٣"``, ``"worker:+1"``).
    """
    match = _SENDER.fullmatch(sender) if type(sender) is str else None
    if match is None:
        _fail("sender", f"{sender!r} is not role:rank (e.g. worker:3)")
    return match.group(1), int(match.group(2))


def sender_rank(sender, role, limit):
    """The rank in a ``"worker:3"`` style sender name, checked against ``role`` and ``limit``."""
    match = _SENDER.fullmatch(sender) if type(sender) is str else None
    if match is None or match.group(1) != role or int(match.group(2)) >= limit:
        _fail("sender", f"{sender!r} is not a {role} of this job ({role}:0..{limit - 1})")
    return int(match.group(2))


def check_sender(msg, identity):
    """``(role, rank)`` of ``msg``'s sender, checked against ``identity``, the identity its
    connection authenticated as (None when the job runs without security: the claim is all
    there is), and against the roles that may send ``msg.cmd`` (``commands.SENDERS``).

    Raises:
        RefusedError: the claim is not the authenticated identity, or the role may not send it.
        ProtocolError: the sender is not ``role:rank``.
    """
    if identity is not None and msg.sender != identity:
        raise RefusedError(f"refused {msg.cmd.value!r}: the message claims to come from "
                           f"{msg.sender!r} but its connection authenticated as {identity!r}")
    role, rank = parse_sender(msg.sender)
    if role not in SENDERS[msg.cmd]:
        raise RefusedError(f"refused {msg.cmd.value!r} from {msg.sender!r}: only "
                           f"{' or '.join(SENDERS[msg.cmd])} processes may send it")
    return role, rank


def check_frame_sizes(msg, sizes):
    """Every declared array size must equal the size of the frame that carries it."""
    if len(sizes) != len(msg.arrays):
        _fail("frames", f"{len(sizes)} array frames follow but the header declares {len(msg.arrays)}")
    for i, (desc, size) in enumerate(zip(msg.arrays, sizes)):
        check_frame_size(i, desc, size)


def check_frame_size(i, desc, size):
    """The frame of array ``i`` must have exactly the bytes ``desc`` declares."""
    if desc.wire_nbytes != size:
        how = "" if desc.compression is None else f" as {desc.compression.type}"
        _fail(f"arrays[{i}]", f"(key {desc.key!r}) declares {desc.wire_nbytes} bytes "
                              f"({desc.dtype}{list(desc.shape)}{how}) but its frame has {size}")


def decode(frames):
    """Frames -> validated Message whose ``buffers`` are memoryviews of the array frames."""
    if not frames:
        _fail("message", "has no frames")
    msg = decode_header(frames[0])
    buffers = [f.buffer if hasattr(f, "buffer") else memoryview(f) for f in frames[1:]]
    check_frame_sizes(msg, [b.nbytes for b in buffers])
    msg.buffers = buffers
    return msg


def as_array(desc, buffer):
    """A numpy view of ``buffer`` as described by ``desc`` (read-only if the buffer is); a
    compressed frame is decoded into a new array of the key's dtype and shape."""
    if desc.compression is not None:
        return compression_mod.decode(desc.compression, desc.dtype, desc.shape, buffer)
    return np.frombuffer(buffer, dtype=desc.dtype).reshape(desc.shape)
