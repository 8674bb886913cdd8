"""Pure state of one server's shard: stored values, per-step merges, the optimizer. No sockets.

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
left-to-right sum. A host's aggregator sends the same host sum as one push (``span``), so a job
gives bitwise-identical values run after run, fused or not, with or without the host tier. When step
i of a key is complete its value becomes the sum (no optimizer) or ``optimizer.update(value,
sum)``; push acks of the step go out then, which bounds how far a worker can run ahead. A pull
for step i is parked until step i is complete.
Async semantics: every push is applied on arrival (``value += push`` without optimizer).
"""
import dataclasses

import numpy as np

from ..errors import (ConfigError, DoubleInitError, OptimizerError, DTypeMismatchError, ProtocolError, ShapeMismatchError,
                      UninitializedKeyError)
from ..optim.base import STEP_KEY
from ..protocol import ArrayDesc
from .traffic import HostTraffic


def _low(a, lo, hi):
    """``a[lo:hi].min()``; one element is read directly (plain keys are the hot path, and a
    numpy reduction costs a microsecond or two per call)."""
    return a[lo] if hi - lo == 1 else a[lo:hi].min()


def _high(a, lo, hi):
    """``a[lo:hi].max()``, like ``_low``."""
    return a[lo] if hi - lo == 1 else a[lo:hi].max()


@dataclasses.dataclass
class Reply:
    token: object
    arrays: list = dataclasses.field(default_factory=list)   # [(ArrayDesc, np.ndarray)]
    error: Exception = None


class _StepMerge:
    """Fixed (host, local rank) order sum of one step's pushes, per member of the entry."""
    __slots__ = ("acc", "host_acc", "next_rank", "early", "tokens")

    def __init__(self, members):
        self.acc = None                                  # flat sum so far (members' slices)
        self.host_acc = None     # flat sum of the current host's pushes (hosts after the first)
        self.next_rank = np.zeros(members, np.int64)     # per member: the rank to add next
        self.early = []     # [rank, count, lo, hi, flat]: arrived before its turn (count: the
        #                     workers it sums: 1, or a whole host's from its aggregator)
        self.tokens = []    # (token, lo, hi): push acks due when members lo..hi-1 complete


class _KeyState:
    """A key-part (one member) or a fusion group (many); ``value`` is flat, member ``m`` is
    ``value[bounds[m]:bounds[m + 1]]`` shaped ``shapes[m]``."""
    __slots__ = ("key", "part", "dtype", "shape", "names", "shapes", "bounds", "sync", "value",
                 "failed", "inited_by", "parked_inits", "pushes", "completed", "merges",
                 "parked_pulls", "opt_state", "group_state", "group_steps", "free")

    def __init__(self, key, part, dtype, shape, sync, num_workers, members=None):
        self.key, self.part, self.dtype, self.shape = key, part, dtype, tuple(shape)
        self.sync = sync
        self.value = None
        self.failed = None       # the error of an update that raised: the entry is unusable
        self.inited_by = set()
        self.parked_inits = []   # (token, rank, dtype, shape, members)
        self.merges = {}         # step -> _StepMerge
        self.parked_pulls = []   # (step, lo, hi, whole, token)
        self.free = []           # a spare flat buffer (no page faults per step)
        self.set_members(members, num_workers)

    def set_members(self, members, num_workers):
        """Lay the entry out as ``members`` ([(key, shape)]; None: the entry is one plain key)."""
        members = members or [(self.key, self.shape)]
        self.names = [k for k, _ in members]
        self.shapes = [tuple(s) for _, s in members]
        self.bounds = [0]
        for s in self.shapes:
            self.bounds.append(self.bounds[-1] + int(np.prod(s, dtype=np.int64)))
        self.pushes = np.zeros((num_workers, len(members)), np.int64)   # pushes received
        self.completed = np.zeros(len(members), np.int64)               # steps applied
        self.reset_optimizer_state()

    def reset_optimizer_state(self):
        self.opt_state = [None] * len(self.names)   # per member: the optimizer's state dict
        self.group_state = None    # a group under an elementwise optimizer: state of the flat value
        self.group_steps = None    # ... and every member's update count ("t"), in one array

    def layout(self):
        return list(zip(self.names, self.shapes))

    @property
    def grouped(self):
        return len(self.names) > 1 or self.names[0] != self.key

    def member_view(self, flat, m):
        return flat[self.bounds[m]:self.bounds[m + 1]].reshape(self.shapes[m])


class _NoGuard:
    """Default buffer guard: nothing is ever in flight (in-process use)."""
    def busy(self, array):
        return False

    def shared(self, array):
        return False

    def wait(self, array):
        pass


class ShardState:
    """One server's keys. ``guard`` lets the I/O layer say when a buffer is still being sent.
    ``owns_pushes``: pushed arrays are the shard's to keep (received buffers, not a caller's),
    so a step's sum is built in rank 0's array itself: no copy, no extra buffer per step."""

    def __init__(self, num_workers, sync=True, guard=None, owns_pushes=False):
        self.num_workers = num_workers
        self.sync = sync
        self.guard = guard or _NoGuard()
        self.owns_pushes = owns_pushes
        self.keys = {}                 # (key, part) -> _KeyState (a key-part or a group)
        self.members = {}              # key of a group member -> (its group's _KeyState, index)
        self.optimizer = None
        self.counters = {"pushes": [0] * num_workers, "pulls": [0] * num_workers,
                         "bytes_in": 0, "bytes_out": 0, "updates": 0}
        self.hosts = {}       # rank -> (first rank of its host, workers on the host, host name)
        self.traffic = HostTraffic()

    # -- hosts ----------------------------------------------------------------------------
    def set_host(self, rank, first, count, name):
        """Record the host of worker ``rank`` (its init says): ranks ``first..first+count-1``
        share host ``name``. Raises ProtocolError when that contradicts what is known."""
        if not (0 <= first <= rank < first + count <= self.num_workers):
            raise ProtocolError(f"worker {rank} says its host holds workers {first}..{first + count - 1}"
                                f" of {self.num_workers}: ranks must be contiguous per host")
        self.hosts[rank] = (first, count, str(name))

    def host_of(self, rank):
        """``(first, count, name)`` of ``rank``'s host; unknown: one host of every worker."""
        return self.hosts.get(rank) or (0, self.num_workers, "")

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
            st = self.keys[ident] = _KeyState(desc.key, desc.part, desc.dtype, desc.shape, sync,
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
        st.parked_inits.append((token, rank, desc.dtype, tuple(desc.shape), members))
        if st.value is None:
            return []
        replies = []
        for tok, r, dtype, shape, mem in st.parked_inits:
            err = self._mismatch(st.key, st.shape, st.dtype, shape, dtype, "init")
            if err is None and st.grouped and mem != st.layout():
                err = ConfigError(
                    f"worker {r} initialised keys {[k for k, _ in mem or ()][:4]}... together, but "
                    f"worker 0 initialised {st.names[:4]}... together; initialise the same "
                    f"lists of keys in the same order on every worker")
            if err is not None:
                st.inited_by.discard(r)
            replies.append(Reply(tok, error=err))
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
        count = 1
        if summed:
            first_rank, count, name = self.host_of(rank)
            if first_rank != rank:
                return [Reply(token, error=ProtocolError(
                    f"a host sum of key {desc.key!r} came from worker {rank}, which is not the first "
                    f"worker of its host ({first_rank})"))]
            self.traffic.count_push(name, desc, count)
            if count > 1:
                return self._push_span(st, lo, hi, rank, count, desc, flat, token)
        else:
            self.traffic.count_push(self.host_of(rank)[2], desc, 1)
        row = st.pushes[rank]
        first, last = _low(row, lo, hi), _high(row, lo, hi)
        if st.sync and (first != desc.step - 1 or last != desc.step - 1):
            first, last = int(first), int(last)
            why = (f"expected {first + 1}: a message was lost or a worker restarted" if first == last
                   else f"but its keys are at steps {first + 1}..{last + 1}: a whole-group push needs them in step")
            return [Reply(token, error=ProtocolError(
                f"push of key {desc.key!r} from worker {rank} is step {desc.step}, {why}"))]
        self.counters["pushes"][rank] += hi - lo
        self.counters["bytes_in"] += flat.nbytes
        if not st.sync:
            row[lo:hi] += 1
            return self._apply_async(st, lo, hi, flat, token)
        row[lo:hi] = desc.step
        return self._merge(st, lo, hi, rank, 1, desc.step, flat, token)

    def _push_span(self, st, lo, hi, rank, count, desc, flat, token):
        """A host's sum: the push of workers ``rank..rank+count-1`` at once."""
        rows = st.pushes[rank:rank + count, lo:hi]
        first, last = int(rows.min()), int(rows.max())
        if st.sync and (first != desc.step - 1 or last != desc.step - 1):
            return [Reply(token, error=ProtocolError(
                f"host push of key {desc.key!r} from workers {rank}..{rank + count - 1} is step "
                f"{desc.step}, expected {first + 1}: a message was lost or a worker restarted"))]
        for r in range(rank, rank + count):
            self.counters["pushes"][r] += hi - lo
        self.counters["bytes_in"] += flat.nbytes
        if not st.sync:
            rows += 1
            return self._apply_async(st, lo, hi, flat, token)
        rows[...] = desc.step
        return self._merge(st, lo, hi, rank, count, desc.step, flat, token)

    def _merge(self, st, lo, hi, rank, count, step, flat, token):
        merge = st.merges.get(step)
        if merge is None:
            merge = st.merges[step] = _StepMerge(len(st.names))
        if token is not None:
            merge.tokens.append((token, lo, hi))
        merge.early.append([rank, count, lo, hi, flat])
        if not self._sum_in_rank_order(st, merge):
            return []          # nothing of this step became complete
        return self._complete_steps(st)

    def _sum_in_rank_order(self, st, merge):
        """Add every early array whose turn has come; True if a member's step became complete.
        An array spanning members at different turns is split into one entry per member."""
        early, next_rank, bounds = merge.early, merge.next_rank, st.bounds
        completed_any, progress = False, True
        while progress and early:
            progress = False
            for entry in list(early):
                rank, count, lo, hi, flat = entry
                if _low(next_rank, lo, hi) == rank and _high(next_rank, lo, hi) == rank:
                    early.remove(entry)
                    self._add_in_order(st, merge, rank, count, lo, hi, flat)
                    next_rank[lo:hi] += count
                    completed_any = completed_any or rank + count == self.num_workers
                    progress = True
                elif hi - lo > 1 and (next_rank[lo:hi] == rank).any():
                    early.remove(entry)
                    start = bounds[lo]
                    early.extend([rank, count, m, m + 1, flat[bounds[m] - start:bounds[m + 1] - start]]
                                 for m in range(lo, hi))
                    progress = True
        return completed_any

    def _add_in_order(self, st, merge, rank, count, lo, hi, flat):
        """Add the push of ``rank`` (``count`` workers' sum) whose turn it is. The first host's
        pushes go straight into the step's sum; a later host's are summed on their own first
        (``host_acc``) and that sum is added once the host's last worker is in."""
        first, size, _ = self.host_of(rank)
        if first == 0 or count > 1 or size == 1:     # a host's sum, or part of the first host's
            merge.acc = self._accumulate(st, merge.acc, rank == 0, lo, hi, flat)
            return
        merge.host_acc = self._accumulate(st, merge.host_acc, rank == first, lo, hi, flat)
        if rank == first + size - 1:
            host_sum = merge.host_acc[st.bounds[lo]:st.bounds[hi]]
            merge.acc = self._accumulate(st, merge.acc, False, lo, hi, host_sum)

    def _accumulate(self, st, acc, starts, lo, hi, flat):
        """``acc`` (a flat sum, or None) with ``flat`` copied (``starts``) or added into members
        ``lo..hi-1``; a whole owned array that starts a sum becomes the sum itself."""
        if acc is None and starts and self.owns_pushes and hi - lo == len(st.names) and flat.flags.writeable:
            return flat
        if acc is None:
            acc = self._take_buffer(st)
        target = acc[st.bounds[lo]:st.bounds[hi]]
        if starts:
            np.copyto(target, flat)
        else:
            np.add(target, flat, out=target)
        return acc

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
            for tok in merge.tokens:
                _, lo, hi = tok
                if _low(st.completed, lo, hi) >= step:
                    replies.append(Reply(tok[0]))
                else:
                    still.append(tok)
            merge.tokens = still
            if _low(st.completed, 0, members) >= step:
                del st.merges[step]
                if merge.acc is not None and merge.acc is not st.value:
                    self._release(st, merge.acc)
        if progressed and st.parked_pulls:
            due = [p for p in st.parked_pulls if _low(st.completed, p[1], p[2]) >= p[0]]
            if due:
                st.parked_pulls = [p for p in st.parked_pulls if _low(st.completed, p[1], p[2]) < p[0]]
                replies.extend(self._value_reply(st, lo, hi, whole, t) for _, lo, hi, whole, t in due)
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
        opt = self.optimizer
        if opt.elementwise and st.grouped and len(members) == len(st.names) and self._update_group(st, grad):
            return
        for m in members:
            weight = st.member_view(st.value, m)
            if st.opt_state[m] is None:
                st.opt_state[m] = opt.create_state(st.names[m], weight)
            g = grad[st.bounds[m] - offset:st.bounds[m + 1] - offset].reshape(st.shapes[m])
            try:
                opt.update(st.names[m], weight, g, st.opt_state[m])
            except OptimizerError:
                raise
            except Exception as exc:
                raise OptimizerError(
                    f"the update of key {st.names[m]!r} (step {int(st.completed[m]) + 1}) raised "
                    f"{type(exc).__name__}: {exc}; the key cannot be used any more") from exc
            self.counters["updates"] += 1

    def _update_group(self, st, grad):
        """One ``optimizer.update`` of a whole group's flat value, for an elementwise optimizer:
        the same arithmetic on every element as one call per member, without a Python round
        per key. Only when every member is at the same update count (members pushed on their
        own may not be); returns False to update member by member."""
        if st.group_state is None:
            self._create_group_state(st)
        steps = st.group_steps
        t = steps[0]
        if len(steps) > 1 and (steps != t).any():
            return False
        state = st.group_state
        state[STEP_KEY][...] = t
        try:
            self.optimizer.update(self._group_label(st), st.value, grad[:st.bounds[-1]], state)
        except OptimizerError:
            raise
        except Exception as exc:
            raise OptimizerError(
                f"the update of keys {self._group_label(st)} (step {int(t) + 1}) raised "
                f"{type(exc).__name__}: {exc}; the keys cannot be used any more") from exc
        steps += 1
        self.counters["updates"] += len(st.names)
        return True

    def _create_group_state(self, st):
        """The optimizer's state of a group's flat value; each member's state becomes views of
        it (its slice of every slot, its entry of ``group_steps``), taking over what a member
        updated on its own had learnt, so both ways of updating share one state."""
        opt, flat = self.optimizer, st.value
        state = opt.create_state(self._group_label(st), flat)
        for name, a in state.items():
            if name != STEP_KEY and a.shape != flat.shape:
                raise OptimizerError(
                    f"{type(opt).__name__} sets elementwise = True, but its state {name!r} has shape "
                    f"{a.shape}, not the weight's {flat.shape}; an elementwise optimizer keeps "
                    f"weight-shaped state only: set elementwise = False on the class")
        steps = np.zeros(len(st.names), np.int64)
        views = []
        for m, old in enumerate(st.opt_state):
            view = {name: steps[m:m + 1].reshape(()) if name == STEP_KEY else st.member_view(a, m)
                    for name, a in state.items()}
            for name, a in (old or {}).items():
                view[name][...] = a
            views.append(view)
        st.opt_state, st.group_state, st.group_steps = views, state, steps

    @staticmethod
    def _group_label(st):
        return f"{st.names[0]!r}..{st.names[-1]!r} ({len(st.names)} keys fused)"

    def _writable_value(self, st):
        """``st.value``, safe to write in place: once its memory went out by zmq's reference
        (``guard.shared``) it is replaced by a copy (once: the copy is ours), else sends of it
        still in flight are waited for."""
        if self.guard.shared(st.value):
            st.value = st.value.copy()
        else:
            self.guard.wait(st.value)
        return st.value

    def _fail(self, st, exc, step, tokens=()):
        """An update raised: the entry is marked failed, and everyone waiting on it (pushers of
        every pending step, parked pulls) gets the error instead of waiting forever."""
        st.failed = exc if isinstance(exc, OptimizerError) else OptimizerError(
            f"the update of key {st.key!r} (part {st.part}, step {step}) raised "
            f"{type(exc).__name__}: {exc}; the key cannot be used any more")
        waiting = list(tokens) + [t[0] for m in st.merges.values() for t in m.tokens]
        waiting += [p[4] for p in st.parked_pulls]
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
        if st.sync and desc.step > _low(st.completed, lo, hi):
            st.parked_pulls.append((desc.step, lo, hi, whole, token))
            return []
        return [self._value_reply(st, lo, hi, whole, token)]

    def _value_reply(self, st, lo, hi, whole, token):
        if whole:
            desc = ArrayDesc(st.key, st.part, st.dtype, st.shape, int(_low(st.completed, 0, len(st.names))))
            value = st.value.reshape(st.shape)
        else:
            desc = ArrayDesc(st.names[lo], 0, st.dtype, st.shapes[lo], int(st.completed[lo]))
            value = st.member_view(st.value, lo)
        self.counters["bytes_out"] += value.nbytes
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
        return dict(self.counters, keys=len(self.keys), held_bytes=held, steps=steps,
                    hosts=self.traffic.by_host(), key_steps=self.traffic.key_steps())

    def step_complete(self, desc):
        """Whether step ``desc.step`` of what ``desc`` names has been applied (timelines)."""
        st, lo, hi, err = self._lookup(desc, "timeline")
        return err is None and _low(st.completed, lo, hi) >= desc.step

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
