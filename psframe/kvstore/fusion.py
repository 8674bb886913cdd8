"""Fusion groups: a model's small keys, initialised in one call, travel as one array.

A parameter list has hundreds of small tensors (biases, norms); one message per server already
carries all of them, but a frame and a Python round per key on each side would cost more than
the bytes. So keys of at most ``PSFRAME_FUSE_KEY_BYTES`` that one ``init`` call creates are
packed, in call order and by dtype, into groups of up to ``GROUP_BYTES``, the way ps-lite sends
many keys in one value buffer and DDP fills gradient buckets. A group is one stored entry on one
server. A push or pull naming every key of a group at the same step sends the group as one array
(one copy into a reused buffer); any other call sends its keys one by one and the server keeps
each key's own steps, so the semantics of every key are unchanged.

Grouping is a pure function of the init call (keys, shapes, dtypes, the threshold), so every
worker that makes the same call forms the same groups; the server rejects workers that differ.
"""
import numpy as np

from .. import arrays, sharding

PREFIX = "\x00fused:"               # wire keys of groups; user keys cannot start with "\x00"
GROUP_BYTES = sharding.CHUNK_BYTES  # a group is never cut into chunks


class Group:
    """Keys stored together: member ``m`` is ``flat[bounds[m]:bounds[m + 1]]``."""
    __slots__ = ("key", "dtype", "names", "infos", "bounds", "server", "_outgoing", "_landing", "_views")

    def __init__(self, names, infos):
        self.names, self.infos = names, infos
        self.dtype = infos[0].dtype
        self.bounds = [0]
        for info in infos:
            self.bounds.append(self.bounds[-1] + info.size)
        self.key = f"{PREFIX}{len(names)}:{names[0]!r}"
        self.server = None       # the server holding the group (set at placement)
        self._outgoing = []      # SendBuffers: reused once sent
        self._landing = self._views = None

    @property
    def size(self):
        return self.bounds[-1]

    def wire_members(self):
        """``[[key, shape], ...]``: what the server checks every worker's group against."""
        return [[k, list(info.shape)] for k, info in zip(self.names, self.infos)]

    def in_step(self):
        """True when every member has the same number of pushes: the group can go as one."""
        first = self.infos[0].pushes
        return all(info.pushes == first for info in self.infos)

    def pack(self, flats):
        """A ``SendBuffer`` holding the members' flat host arrays (in member order); set its
        ``tracker`` to the send's so the buffer is reused only after zmq is done with it."""
        for slot in self._outgoing:
            if slot.tracker is None or slot.tracker.done:
                break
        else:
            slot = SendBuffer(np.empty(self.size, dtype=self.dtype))
            self._outgoing.append(slot)
        slot.tracker = None
        np.concatenate(flats, out=slot.array)
        return slot

    def landing(self):
        """The flat buffer a fused pull is received into (one per group: a pull call copies it
        out, with ``unpack``, before it returns)."""
        if self._landing is None:
            self._landing = np.empty(self.size, dtype=self.dtype)
            b = self.bounds
            self._views = [self._landing[b[m]:b[m + 1]].reshape(info.shape)
                           for m, info in enumerate(self.infos)]
        return self._landing

    def unpack(self, outs):
        """Copy each member's part of the landing buffer into its outputs (``outs[m]``: a list)."""
        copyto = np.copyto
        for view, targets in zip(self._views, outs):
            for out in targets:
                if type(out) is np.ndarray:
                    copyto(out, view)
                else:
                    arrays.copy_into(out, view)


class SendBuffer:
    """A group's reusable send buffer and the zmq tracker of the send that last used it."""
    __slots__ = ("array", "tracker")

    def __init__(self, array):
        self.array, self.tracker = array, None


class _OpenGroup:
    """A group ``plan`` is still filling: its keys, their infos, bytes and elements so far."""
    __slots__ = ("names", "infos", "nbytes", "elements")

    def __init__(self):
        self.names, self.infos, self.nbytes, self.elements = [], [], 0, 0

    def close(self):
        """The unit it becomes: a ``Group``, or its key alone when it has just one."""
        return self.names[0] if len(self.names) == 1 else Group(self.names, self.infos)


def plan(keys, infos, fuse_key_bytes, max_elements, num_servers=1):
    """Split one init call into units: ``Group`` objects and the keys that travel alone.

    Keys of at most ``fuse_key_bytes`` (0: fuse nothing) join the open group of their dtype (in call order) until
    it would pass its cap or ``max_elements`` (the bound above which a key would be sliced over
    servers). The cap is ``GROUP_BYTES``, or less when the call's small keys would otherwise fill
    fewer groups than there are servers (so a small model still spreads over every server). A
    group of one key is just that key.
    """
    sizes = [info.size * np.dtype(info.dtype).itemsize for info in infos]
    small = [0 < fuse_key_bytes and nbytes <= fuse_key_bytes and info.size <= max_elements
             for info, nbytes in zip(infos, sizes)]
    cap = min(GROUP_BYTES, -(-sum(n for n, f in zip(sizes, small) if f) // max(num_servers, 1)))
    units, open_groups = [], {}      # dtype -> _OpenGroup
    for k, info, nbytes, fusable in zip(keys, infos, sizes, small):
        if not fusable:
            units.append(k)
            continue
        cur = open_groups.get(info.dtype)
        if cur is None or cur.nbytes + nbytes > cap or cur.elements + info.size > max_elements:
            cur = open_groups[info.dtype] = _OpenGroup()
            units.append(cur)
        cur.names.append(k)
        cur.infos.append(info)
        cur.nbytes += nbytes
        cur.elements += info.size
    return [u.close() if type(u) is _OpenGroup else u for u in units]
