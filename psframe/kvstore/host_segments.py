"""The host tier's shared memory, on the aggregator's side: one segment per init call, laid out
by the call's key list (a slot per local rank, then a result slot, per key), made when local
rank 0's init of that call arrives, told to every worker, and unlinked once all of them have
it mapped (the memory then lives until the last process exits, kill -9 included).

Local rank 0's init comes first because the aggregator's uplink sends with local rank 0's key
records (parts and servers), which its own init fills in: another worker's init of the same
keys is parked until then, however late local rank 0 is."""
import os

import numpy as np

from ..aggregation import reduce, shm
from ..errors import ConfigError, PSError, to_wire
from .host_notes import Entry

LEAD = b"0"       # local rank 0's identity: the worker whose thread the aggregator is


class HostSegments:
    """Segments of one host; ``entries`` (key -> ``Entry``) is filled as they are made."""

    def __init__(self, prefix, size, entries):
        self.prefix, self.size, self.entries = prefix, size, entries
        self._segments = []         # [Segment, key list, attached count]
        self._layouts = {}          # init call -> (offsets, arena bytes)
        self._inits = {}            # worker id -> init calls seen
        self._parked = []           # (worker id, note id, keys): ahead of local rank 0's init

    def init(self, who, mid, keys):
        """Worker ``who``'s init call (its note ``mid``) of ``keys`` (``[key, dtype, shape]``);
        returns the replies ``[(worker id, reply)]`` that became due: none while it waits for
        local rank 0, else its own and, after local rank 0's, those parked behind it.

        Raises:
            ConfigError: the call names other keys than the same call of another worker.
        """
        n = self._inits.get(who, 0)
        if who != LEAD and self._inits.get(LEAD, 0) <= n:
            self._parked.append((who, mid, keys))
            return []
        self._inits[who] = n + 1
        names = [k for k, _, _ in keys]
        if n == len(self._segments):
            self._make(n, keys)
        seg, known, _ = self._segments[n]
        if known != names:
            raise ConfigError(f"host tier: init call {n + 1} names keys {names[:4]}... on one worker "
                              f"and {known[:4]}... on another; initialise the same lists of keys in "
                              f"the same order on every worker")
        offsets, arena = self._layouts[n]
        replies = [(who, {"id": mid, "segment": seg.name, "size": seg.size, "arena": arena,
                          "offsets": offsets, "index": n})]
        if who == LEAD:
            parked, self._parked = self._parked, []
            for p_who, p_mid, p_keys in parked:
                try:
                    replies += self.init(p_who, p_mid, p_keys)
                except PSError as exc:
                    replies.append((p_who, {"id": p_mid, "error": to_wire(exc)}))
        return replies

    def attached(self, index):
        """One more worker has segment ``index`` mapped; with all of them, its name goes."""
        seg = self._segments[index]
        seg[2] += 1
        if seg[2] == self.size:
            seg[0].unlink()

    def unlink_all(self):
        for seg, _, _ in self._segments:
            seg.unlink()

    def _make(self, n, keys):
        sizes = [int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for _, dtype, shape in keys]
        offsets, arena = shm.layout(sizes)
        seg = shm.Segment.create(f"{self.prefix}-{os.getpid()}-{n}", arena * (self.size + 1))
        reduce.pin(seg)
        self._segments.append([seg, [k for k, _, _ in keys], 0])
        for (k, dtype, shape), off in zip(keys, offsets):
            shape = tuple(shape)
            slots = [seg.array(r * arena + off, dtype, shape) for r in range(self.size)]
            self.entries[k] = Entry(k, slots, seg.array(self.size * arena + off, dtype, shape))
        self._layouts[n] = (offsets, arena)
