"""Key -> server placement and slicing of big arrays (ps-lite's slicer). Pure and deterministic.

A key of at most ``bigarray_bound`` elements lives whole on one server, chosen to balance bytes
(greedy: the server holding the fewest bytes so far, lowest index on ties). A bigger key is cut
into ``num_servers`` near-equal contiguous slices of its flattened elements, slice ``j`` on
server ``j``, so its pushes and pulls move over every server at once. Every piece longer than
``CHUNK_BYTES`` is further cut into consecutive chunks, each a part of its own: the server keeps
value and optimizer state per part, and merges the first chunks while later ones are still on
the wire. (An elementwise optimizer cannot tell; one that needs a whole tensor's norm, such as
LAMB, sees one part at a time and belongs on the workers.)
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Part:
    """One piece of a key: which server holds flat elements ``[start, stop)`` as part ``part``."""
    server: int
    part: int
    start: int
    stop: int

    @property
    def size(self):
        return self.stop - self.start


def slice_bounds(size, num_slices):
    """``num_slices`` near-equal ``(start, stop)`` ranges covering ``range(size)``; the first
    ``size % num_slices`` ranges are one element longer."""
    base, extra = divmod(size, num_slices)
    bounds, start = [], 0
    for j in range(num_slices):
        stop = start + base + (1 if j < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


CHUNK_BYTES = 4 << 20


def parts_of(server, size, num_servers, itemsize=None):
    """The parts of a key placed on ``server`` (``-1`` means sliced over all servers); with
    ``itemsize``, pieces above CHUNK_BYTES are chunked (part ids numbered in order, so every
    worker derives the same ones)."""
    if server >= 0:
        parts = (Part(server, 0, 0, size),)
    else:
        parts = tuple(Part(j, j, a, b) for j, (a, b) in enumerate(slice_bounds(size, num_servers)))
    return parts if itemsize is None else chunked(parts, max(1, CHUNK_BYTES // itemsize))


def chunked(parts, per_chunk):
    """``parts`` with every part longer than ``per_chunk`` elements cut into consecutive chunks."""
    if all(p.size <= per_chunk for p in parts):
        return parts
    out = []
    for p in parts:
        for start in range(p.start, max(p.stop, p.start + 1), per_chunk):
            out.append(Part(p.server, len(out), start, min(start + per_chunk, p.stop)))
    return tuple(out)


class PlacementState:
    """The scheduler's table of key placements; the first placement of a key is final."""

    def __init__(self, num_servers, bigarray_bound):
        self.num_servers = num_servers
        self.bigarray_bound = bigarray_bound
        self.placement = {}                  # key -> server index, or -1 when sliced
        self.load = [0] * num_servers        # bytes per server

    def place(self, key, size, nbytes):
        """Return the server of ``key`` (``-1``: sliced), placing it on first sight."""
        if key in self.placement:
            return self.placement[key]
        if size > self.bigarray_bound and self.num_servers > 1:
            server = -1
            for part in parts_of(-1, size, self.num_servers):
                self.load[part.server] += nbytes * part.size // max(size, 1)
        else:
            server = min(range(self.num_servers), key=lambda s: (self.load[s], s))
            self.load[server] += nbytes
        self.placement[key] = server
        return server
