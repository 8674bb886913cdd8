"""Pure state of one server's shard: its entries, per-step merges in rank order, parked pulls.
No sockets. What an entry stores is in ``entry``, the order of a step's sum in ``rank_order``, how
an optimizer runs over an entry in ``updates``.

Each call takes a reply ``token`` (opaque: the service's routing id + request id) and returns the
list of ``Reply`` objects that became due, which may answer earlier, parked requests too.

A stored entry is a key-part, or a *fusion group*: small keys a worker initialised in one call,
kept in one flat buffer so that a push naming the whole group is merged with one numpy call
instead of one Python round per key (ps-lite sends many keys in one value buffer for the same
reason). Every key of a group keeps its own steps all the same: a push or pull may name one
member, and members may run at different steps; the state below is per member throughout, and
the whole-group path is just the case where every member moves together.

Sync semantics: the i-th push of a key from every worker forms step i. Pushes are summed in
(host, local rank) order: each host's pushes first, in local-rank order, then the host sums in
host order (an array that arrives before its turn waits, unsummed). Ranks are contiguous per
host, so this is worker-rank order with one bracket per host; with one host it is the plain
left-to-right sum. A host's aggregator sends the same host sum as one push (``summed``), so a
job gives bitwise-identical values run after run, fused or not, with or without the host tier.
When step i of a key is complete its value becomes the sum (no optimizer) or
``optimizer.update(value, sum)``; push acks of the step go out then, which bounds how far a
worker can run ahead. A pull for step i is parked until step i is complete.
Async semantics: every push is applied on arrival (``value += push`` without optimizer).
"""
import numpy as np

from ..errors import (ConfigError, DoubleInitError, OptimizerError, DTypeMismatchError, ProtocolError, ShapeMismatchError,
                      UnevenStepsError, UninitializedKeyError)
from ..protocol import ArrayDesc
from . import updates
from .entry import EarlyPush, KeyState, NoGuard, ParkedInit, ParkedPull, PushAck, Reply, StepMerge, high, low
from .hosts import Hosts
from .rank_order import RankOrder

__all__ = ["ShardState", "Reply"]


class ShardState(RankOrder):
    """One server's keys. ``guard`` lets the I/O layer say when a buffer is still being sent.
    ``owns_pushes``: pushed arrays are the shard's to keep (received buffers, not a caller's),
    so a step's sum is built in rank 0's array itself: no copy, no extra buffer per step."""

    def __init__(self, num_workers, sync=True, guard=None, owns_pushes=False):
        self.num_workers = num_workers
        self.sync = sync
        self.guard = guard or NoGuard()
        self.owns_pushes = owns_pushes
        self.keys = {}                 # (key, part) -> KeyState (a key-part or a group)
        self.members = {}              # key of a group member -> (its group's _KeyState, index)
        self.optimizer = None
        self.absent = {}               # rank -> True (joined: its missing pushes count as zero)
                                       # or False (finished: a step that needs it cannot complete)
        # bytes per worker rank too: with the ranks' hosts, what crossed between hosts
        self.counters = {"pushes": [0] * num_workers, "pulls": [0] * num_workers,
                         "bytes_in": 0, "bytes_out": 0, "updates": 0,
                         "bytes_in_by_rank": [0] * num_workers,
                         "bytes_out_by_rank": [0] * num_workers}
        self.hosts = Hosts(num_workers)

    # -- init ---------------------------------------------------------------------------
    def init(self, rank, desc, array, token, sync=None, members=None, adopt=False):
        """Worker ``rank`` initialises part ``desc``; ``array`` is the value (rank 0) or None.
        ``sync`` (default: the shard's) fixes the key's mode; workers must agree on it.
        ``members`` ([(key, shape)], in order) makes ``desc`` a fusion group of those keys.
        ``adopt``: ``array`` is the shard's to keep (a received buffer), so it is stored as is
        when it is writable, instead of copied."""
        sync = self.sync if sync is None else sync
        ident = (desc.key, desc.part)
        members = [(k, tuple(s)) for k, s in members] if members else None
        if members and (len(desc.shape) != 1 or desc.shape[0] != sum(int(np.prod(s, dtype=np.int64))
                                                                    for _, s in members)):
            return [Reply(token, error=ProtocolError(
                f"group {desc.key!r} has shape {tuple(desc.shape)}, not the flat sum of its "
                f"members' sizes"))]
        st = self.keys.get(ident)
        if st is None:
            err = self._clashes(desc, members, rank)
            if err is not None:
                return [Reply(token, error=err)]
            st = self.keys[ident] = KeyState(desc.key, desc.part, desc.dtype, desc.shape, sync,
                                              self.num_workers, members)
            self._register_members(st)
        elif array is not None and st.value is None and st.grouped and members != st.layout():
            # rank 0's list decides; the ranks that came first are checked against it below
            for k in st.names:
                del self.members[k]
            err = self._clashes(desc, members, rank)
            if err is not None:
                self._register_members(st)
                return [Reply(token, error=err)]
            st.shape = tuple(desc.shape)
            st.set_members(members, self.num_workers)
            self._register_members(st)
        if rank in st.inited_by:
            return [Reply(token, error=DoubleInitError(st.names[0] if st.grouped else desc.key, rank))]
        if st.sync != sync:
            return [Reply(token, error=ConfigError(
                f"key {desc.key!r}: worker {rank} uses {'dist_sync' if sync else 'dist_async'} but "
                f"another worker initialised it as {'dist_sync' if st.sync else 'dist_async'}; "
                f"create the same kind on every worker"))]
        if array is not None and st.value is None:
            st.dtype, st.shape = desc.dtype, tuple(desc.shape)
            keep = adopt and array.flags.writeable and array.flags.c_contiguous and array.dtype == desc.dtype
            st.value = (array if keep else np.array(array, dtype=desc.dtype, copy=True)).reshape(-1)
        st.inited_by.add(rank)
        st.parked_inits.append(ParkedInit(token, rank, desc.dtype, tuple(desc.shape), members))
        if st.value is None:
            return []
        replies = []
        for p in st.parked_inits:
            err = self._mismatch(st.key, st.shape, st.dtype, p.shape, p.dtype, "init")
            if err is None and st.grouped and p.members != st.layout():
                err = ConfigError(
                    f"worker {p.rank} initialised keys {[k for k, _ in p.members or ()][:4]}... "
                    f"together, but "
                    f"worker 0 initialised {st.names[:4]}... together; initialise the same "
                    f"lists of keys in the same order on every worker")
            if err is not None:
                st.inited_by.discard(p.rank)
            replies.append(Reply(p.token, error=err))
        st.parked_inits = []
        return replies

    def _register_members(self, st):
        if st.grouped:
            for m, k in enumerate(st.names):
                self.members[k] = (st, m)

    def _clashes(self, desc, members, rank):
        """A key is stored once: alone, or in one group."""
        for k in [k for k, _ in members] if members else [desc.key]:
            if k in self.members or (members and (k, 0) in self.keys):
                return ConfigError(
                    f"key {k!r}: worker {rank} initialised it {'with other keys' if members else 'alone'}"
                    f" but another worker did not; initialise the same lists of keys in the same "
                    f"order on every worker")
        return None

    # -- push ---------------------------------------------------------------------------
    def push(self, rank, desc, array, token, summed=False):
        """Merge (sync) or apply (async) one pushed array. ``token`` None: no ack wanted.
        ``summed``: ``rank`` is the first of its host and ``array`` is the sum of every
        worker's push on that host (the host tier)."""
        st, lo, hi, err = self._lookup(desc, "push")
        if err is not None:
            return [Reply(token, error=err)]
        flat = array.reshape(-1)
        first_rank, count, host = self.hosts.of(rank)
        self.hosts.count_push(host, desc)
        if summed:
            if first_rank != rank:
                return [Reply(token, error=ProtocolError(
                    f"a host sum of key {desc.key!r} came from worker {rank}, which is not the first "
                    f"worker of its host ({first_rank})"))]
            if count > 1:
                return self._push_host_sum(st, lo, hi, rank, count, desc, flat, token)
        row = st.pushes[rank]
        first, last = low(row, lo, hi), high(row, lo, hi)
        if st.sync and (first != desc.step - 1 or last != desc.step - 1):
            first, last = int(first), int(last)
            why = (f"expected {first + 1}: a message was lost or a worker restarted" if first == last
                   else f"but its keys are at steps {first + 1}..{last + 1}: a whole-group push needs them in step")
            return [Reply(token, error=ProtocolError(
                f"push of key {desc.key!r} from worker {rank} is step {desc.step}, {why}"))]
        self.counters["pushes"][rank] += hi - lo
        self.counters["bytes_in"] += flat.nbytes
        self.counters["bytes_in_by_rank"][rank] += flat.nbytes
        if not st.sync:
            row[lo:hi] += 1
            return self._apply_async(st, lo, hi, flat, token)
        row[lo:hi] = desc.step
        return self._merge(st, EarlyPush(rank, 1, lo, hi, flat), desc.step, token)

    def _push_host_sum(self, st, lo, hi, rank, count, desc, flat, token):
        """A host's sum: the pushes of workers ``rank..rank+count-1`` at once."""
        rows = st.pushes[rank:rank + count, lo:hi]
        first, last = int(rows.min()), int(rows.max())
        if st.sync and (first != desc.step - 1 or last != desc.step - 1):
            return [Reply(token, error=ProtocolError(
                f"host push of key {desc.key!r} from workers {rank}..{rank + count - 1} is step "
                f"{desc.step}, expected {first + 1}: a message was lost or a worker restarted"))]
        for r in range(rank, rank + count):
            self.counters["pushes"][r] += hi - lo
        self.counters["bytes_in"] += flat.nbytes
        self.counters["bytes_in_by_rank"][rank] += flat.nbytes     # the host's bytes came from it
        if not st.sync:
            rows += 1
            return self._apply_async(st, lo, hi, flat, token)
        rows[...] = desc.step
        return self._merge(st, EarlyPush(rank, count, lo, hi, flat), desc.step, token)

    def _merge(self, st, early, step, token):
        merge = st.merges.get(step)
        if merge is None:
            merge = st.merges[step] = StepMerge(len(st.names))
        if token is not None:
            merge.tokens.append(PushAck(token, early.lo, early.hi))
        merge.early.append(early)
        try:
            if not self._sum_in_rank_order(st, merge, step):
                return []          # nothing of this step became complete
        except UnevenStepsError as exc:
            return self._fail_uneven(st, exc)
        return self._complete_steps(st)

    def _complete_steps(self, st):
        """Apply every step whose members are complete, in step order per member."""
        replies, n, progressed, members = [], self.num_workers, False, len(st.names)
        for step in sorted(st.merges):
            merge = st.merges[step]
            if members == 1:       # a plain key: no numpy round trips
                if merge.next_rank[0] != n or st.completed[0] != step - 1:
                    continue
                whole = True
            else:
                ready = (merge.next_rank == n) & (st.completed == step - 1)
                if not ready.any():
                    continue
                whole = bool(ready.all())
            done = range(members) if whole else np.flatnonzero(ready).tolist()
            try:
                self._apply_sum(st, merge.acc, done, whole)
            except Exception as exc:
                return replies + self._fail(st, exc, step)
            if whole:
                st.completed[:] = step
            else:
                st.completed[done] = step
            progressed = True
            still = []
            for ack in merge.tokens:
                if low(st.completed, ack.lo, ack.hi) >= step:
                    replies.append(Reply(ack.token))
                else:
                    still.append(ack)
            merge.tokens = still
            if low(st.completed, 0, members) >= step:
                del st.merges[step]
                if merge.acc is not None and merge.acc is not st.value:
                    self._release(st, merge.acc)
        if progressed and st.parked_pulls:
            due = [p for p in st.parked_pulls if low(st.completed, p.lo, p.hi) >= p.step]
            if due:
                st.parked_pulls = [p for p in st.parked_pulls if low(st.completed, p.lo, p.hi) < p.step]
                replies.extend(self._value_reply(st, p.lo, p.hi, p.whole, p.token, p.rank)
                               for p in due)
        return replies

    def _apply_sum(self, st, acc, members, whole):
        """Members' step sums in ``acc`` become their values (or the optimizer's update)."""
        if self.optimizer is not None:
            self._update(st, acc, members)
        elif whole:
            self._release(st, st.value)   # reused once no reply is still sending it
            st.value = acc
        else:
            value = self._writable_value(st)
            for m in members:
                a, b = st.bounds[m], st.bounds[m + 1]
                value[a:b] = acc[a:b]

    def _apply_async(self, st, lo, hi, flat, token):
        tokens = [token] if token is not None else []
        try:
            if self.optimizer is not None:
                self._update(st, flat, range(lo, hi), st.bounds[lo])
            else:
                target = self._writable_value(st)[st.bounds[lo]:st.bounds[hi]]
                np.add(target, flat, out=target)
        except Exception as exc:
            return self._fail(st, exc, int(st.completed[lo]) + 1, tokens)
        st.completed[lo:hi] += 1
        return [Reply(t) for t in tokens]

    def _update(self, st, grad, members, offset=0):
        """``optimizer.update`` of each member, whose gradient starts at ``grad[bounds[m] - offset]``."""
        self._writable_value(st)
        updates.update(self.optimizer, st, grad, members, self.counters, offset)

    def _writable_value(self, st):
        """``st.value``, safe to write in place: while its memory may still be read by a send
        (``guard.shared``: it went out by zmq's reference; ``guard.busy``: a zero-copy reply
        still in flight) it is replaced by a copy, so the loop never waits for a peer to read."""
        if self.guard.shared(st.value) or self.guard.busy(st.value):
            st.value = st.value.copy()
        return st.value

    def _fail(self, st, exc, step, tokens=()):
        """An update raised: the entry is marked failed, and everyone waiting on it (pushers of
        every pending step, parked pulls) gets the error instead of waiting forever."""
        st.failed = OptimizerError.wrapping(exc, f"the update of key {st.key!r} (part {st.part}, "
                                            f"step {step}) raised", "the key cannot be used any more")
        waiting = list(tokens) + [a.token for m in st.merges.values() for a in m.tokens]
        waiting += [p.token for p in st.parked_pulls]
        st.parked_pulls = []
        for m in st.merges.values():
            m.tokens = []
        return [Reply(t, error=st.failed) for t in waiting]

    def _release(self, st, buf):
        """A buffer the entry no longer needs: kept as its one spare when sums need buffers of
        their own, else dropped (when pushes are owned, a sum starts in rank 0's array; zmq
        holds a reference to whatever it is still sending, so dropping is safe)."""
        if not self.owns_pushes and not st.free:
            st.free.append(buf)

    def _take_buffer(self, st):
        for i, buf in enumerate(st.free):
            if not self.guard.busy(buf):
                return st.free.pop(i)
        return np.empty(st.bounds[-1], dtype=st.dtype)

    # -- pull ---------------------------------------------------------------------------
    def pull(self, rank, desc, token):
        """Reply with the value of the newest step that includes ``rank``'s ``desc.step`` pushes."""
        st, lo, hi, err = self._lookup(desc, "pull")
        if err is not None:
            return [Reply(token, error=err)]
        self.counters["pulls"][rank] += hi - lo
        whole = desc.key == st.key
        if st.sync and desc.step > low(st.completed, lo, hi):
            st.parked_pulls.append(ParkedPull(desc.step, lo, hi, whole, token, rank))
            return []
        return [self._value_reply(st, lo, hi, whole, token, rank)]

    def _value_reply(self, st, lo, hi, whole, token, rank):
        if whole:
            desc = ArrayDesc(st.key, st.part, st.dtype, st.shape, int(low(st.completed, 0, len(st.names))))
            value = st.value.reshape(st.shape)
        else:
            desc = ArrayDesc(st.names[lo], 0, st.dtype, st.shapes[lo], int(st.completed[lo]))
            value = st.member_view(st.value, lo)
        self.counters["bytes_out"] += value.nbytes
        self.counters["bytes_out_by_rank"][rank] += value.nbytes
        return Reply(token, arrays=[(desc, value)])

    # -- optimizer and checks -----------------------------------------------------------
    def set_optimizer(self, optimizer):
        """Install ``optimizer`` for updates from now on; weights stay, state starts fresh."""
        self.optimizer = optimizer
        for st in self.keys.values():
            st.reset_optimizer_state()

    def stats(self):
        held = sum(st.value.nbytes for st in self.keys.values() if st.value is not None)
        steps = {}
        for (key, part), st in self.keys.items():
            if st.grouped:
                steps.update((repr((k, 0)), int(c)) for k, c in zip(st.names, st.completed))
            else:
                steps[repr((key, part))] = int(st.completed[0])
        return dict(self.counters, keys=len(self.keys), held_bytes=held, steps=steps, **self.hosts.stats())

    def step_complete(self, desc):
        """Whether step ``desc.step`` of what ``desc`` names has been applied (timelines)."""
        st, lo, hi, err = self._lookup(desc, "timeline")
        return err is None and low(st.completed, lo, hi) >= desc.step

    def _lookup(self, desc, op):
        """``(state, lo, hi, error)``: the entry ``desc`` names and its members ``lo..hi-1``
        (the whole entry, or one member of a group), or the error that rejects it."""
        st = self.keys.get((desc.key, desc.part))
        if st is not None:
            lo, hi, shape = 0, len(st.names), st.shape
        else:
            found = self.members.get(desc.key) if desc.part == 0 else None
            if found is None:
                return None, 0, 0, UninitializedKeyError(desc.key, op)
            st, lo = found
            hi, shape = lo + 1, st.shapes[lo]
        if st.value is None:
            return None, 0, 0, UninitializedKeyError(desc.key, op)
        if st.failed is not None:
            return None, 0, 0, st.failed
        if desc.shape != shape or desc.dtype != st.dtype:
            return None, 0, 0, self._mismatch(desc.key, shape, st.dtype, desc.shape, desc.dtype, op)
        return st, lo, hi, None

    @staticmethod
    def _mismatch(key, shape, dtype, got_shape, got_dtype, op):
        if tuple(got_shape) != tuple(shape):
            return ShapeMismatchError(key, tuple(shape), tuple(got_shape), op)
        if got_dtype != dtype:
            return DTypeMismatchError(key, dtype, got_dtype, op)
        return None
