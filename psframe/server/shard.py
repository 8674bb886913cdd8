"""Pure state of one server's shard: stored values, per-step merges, the optimizer. No sockets.

Each call takes a reply ``token`` (opaque: the service's routing id + request id) and returns the
list of ``Reply`` objects that became due, which may answer earlier, parked requests too.

Sync semantics: the i-th push of a key from every worker forms step i. Pushes are summed in
worker-rank order (an array that arrives before its turn waits, unsummed), so a job gives
bitwise-identical values run after run. When step i is complete the value becomes the sum (no
optimizer) or ``optimizer.update(value, sum)``; push acks of the step go out then, which bounds
how far a worker can run ahead. A pull for step i is parked until step i is complete.
Async semantics: every push is applied on arrival (``value += push`` without optimizer).
"""
import dataclasses

import numpy as np

from ..errors import (ConfigError, DoubleInitError, OptimizerError, DTypeMismatchError, ProtocolError, ShapeMismatchError,
                      UninitializedKeyError)
from ..protocol import ArrayDesc


@dataclasses.dataclass
class Reply:
    token: object
    arrays: list = dataclasses.field(default_factory=list)   # [(ArrayDesc, np.ndarray)]
    error: Exception = None


class _StepMerge:
    """Fixed-rank-order sum of one step's pushes."""
    __slots__ = ("acc", "next_rank", "early", "tokens")

    def __init__(self):
        self.acc = None
        self.next_rank = 0
        self.early = {}     # rank -> array that arrived before its turn
        self.tokens = []    # push acks due when the step completes


class _KeyState:
    __slots__ = ("key", "part", "dtype", "shape", "sync", "value", "failed", "inited_by", "parked_inits",
                 "pushes", "completed", "merges", "parked_pulls", "opt_state", "free")

    def __init__(self, key, part, dtype, shape, sync):
        self.key, self.part, self.dtype, self.shape = key, part, dtype, tuple(shape)
        self.sync = sync
        self.value = None
        self.failed = None       # the error of an update that raised: the key is unusable
        self.inited_by = set()
        self.parked_inits = []   # (token, rank, dtype, shape)
        self.pushes = {}         # rank -> pushes received
        self.completed = 0       # steps applied
        self.merges = {}         # step -> _StepMerge
        self.parked_pulls = []   # (step, token)
        self.opt_state = None
        self.free = []           # spare buffers of the key's shape (no page faults per step)


class _NoGuard:
    """Default buffer guard: nothing is ever in flight (in-process use)."""
    def busy(self, array):
        return False

    def wait(self, array):
        pass


class ShardState:
    """One server's keys. ``guard`` lets the I/O layer say when a buffer is still being sent."""

    def __init__(self, num_workers, sync=True, guard=None):
        self.num_workers = num_workers
        self.sync = sync
        self.guard = guard or _NoGuard()
        self.keys = {}                 # (key, part) -> _KeyState
        self.optimizer = None
        self.counters = {"pushes": [0] * num_workers, "pulls": [0] * num_workers,
                         "bytes_in": 0, "bytes_out": 0, "updates": 0}

    # -- init ---------------------------------------------------------------------------
    def init(self, rank, desc, array, token, sync=None):
        """Worker ``rank`` initialises part ``desc``; ``array`` is the value (rank 0) or None.
        ``sync`` (default: the shard's) fixes the key's mode; workers must agree on it."""
        sync = self.sync if sync is None else sync
        st = self.keys.get((desc.key, desc.part))
        if st is None:
            st = self.keys[(desc.key, desc.part)] = _KeyState(desc.key, desc.part, desc.dtype,
                                                             desc.shape, sync)
        if rank in st.inited_by:
            return [Reply(token, error=DoubleInitError(desc.key, rank))]
        if st.sync != sync:
            return [Reply(token, error=ConfigError(
                f"key {desc.key!r}: worker {rank} uses {'dist_sync' if sync else 'dist_async'} but "
                f"another worker initialised it as {'dist_sync' if st.sync else 'dist_async'}; "
                f"create the same kind on every worker"))]
        if array is not None and st.value is None:
            st.dtype, st.shape = desc.dtype, tuple(desc.shape)
            st.value = np.array(array, dtype=desc.dtype, copy=True).reshape(desc.shape)
        st.inited_by.add(rank)
        st.parked_inits.append((token, rank, desc.dtype, tuple(desc.shape)))
        if st.value is None:
            return []
        replies = []
        for tok, r, dtype, shape in st.parked_inits:
            err = self._mismatch(st, dtype, shape, "init")
            if err is not None:
                st.inited_by.discard(r)
            replies.append(Reply(tok, error=err))
        st.parked_inits = []
        return replies

    # -- push ---------------------------------------------------------------------------
    def push(self, rank, desc, array, token):
        """Merge (sync) or apply (async) one pushed array. ``token`` None: no ack wanted."""
        st = self.keys.get((desc.key, desc.part))
        if (st is None or st.value is None or st.shape != desc.shape or st.dtype != desc.dtype
                or st.failed is not None):
            st, err = self._checked(desc, "push")
            return [Reply(token, error=err)]
        expected = st.pushes.get(rank, 0) + 1
        if st.sync and desc.step != expected:
            return [Reply(token, error=ProtocolError(
                f"push of key {desc.key!r} from worker {rank} is step {desc.step}, expected "
                f"{expected}: a message was lost or a worker restarted"))]
        st.pushes[rank] = expected
        self.counters["pushes"][rank] += 1
        self.counters["bytes_in"] += array.nbytes
        if not st.sync:
            failed = self._apply_or_fail(st, array, True, [token] if token is not None else [])
            if failed:
                return failed
            st.completed += 1
            return [] if token is None else [Reply(token)]
        merge = st.merges.get(desc.step)
        if merge is None:
            merge = st.merges[desc.step] = _StepMerge()
        if token is not None:
            merge.tokens.append(token)
        merge.early[rank] = array
        while merge.next_rank in merge.early:
            part = merge.early.pop(merge.next_rank)
            if merge.acc is None:
                merge.acc = self._take_buffer(st)
                np.copyto(merge.acc, part)
            else:
                np.add(merge.acc, part, out=merge.acc)
            merge.next_rank += 1
        if merge.next_rank < self.num_workers:
            return []          # this step still waits for a worker (no earlier step can finish)
        return self._complete_steps(st)

    def _complete_steps(self, st):
        replies = []
        while True:
            merge = st.merges.get(st.completed + 1)
            if merge is None or merge.next_rank < self.num_workers:
                break
            del st.merges[st.completed + 1]
            failed = self._apply_or_fail(st, merge.acc, False, merge.tokens)
            if failed:
                return replies + failed
            st.completed += 1
            replies.extend(Reply(tok) for tok in merge.tokens)
        if replies and st.parked_pulls:
            due = [(s, t) for s, t in st.parked_pulls if s <= st.completed]
            st.parked_pulls = [(s, t) for s, t in st.parked_pulls if s > st.completed]
            replies.extend(self._value_reply(st, t) for _, t in due)
        return replies

    def _apply_or_fail(self, st, grad, accumulate, tokens):
        """Apply; if the update raises, the key is marked failed and everyone waiting on it
        (this step's pushers, parked pulls) gets the error instead of waiting forever."""
        try:
            self._apply(st, grad, accumulate)
            return []
        except Exception as exc:
            st.failed = exc if isinstance(exc, OptimizerError) else OptimizerError(
                f"the update of key {st.key!r} (part {st.part}, step {st.completed + 1}) raised "
                f"{type(exc).__name__}: {exc}; the key cannot be used any more")
            waiting = list(tokens) + [t for _, t in st.parked_pulls]
            st.parked_pulls = []
            return [Reply(t, error=st.failed) for t in waiting]

    def _apply(self, st, grad, accumulate):
        if self.optimizer is not None:
            if st.opt_state is None:
                st.opt_state = self.optimizer.create_state(st.key, st.value)
            self.guard.wait(st.value)
            self.optimizer.update(st.key, st.value, grad, st.opt_state)
            self.counters["updates"] += 1
            if not accumulate:
                st.free.append(grad)
        elif accumulate:
            self.guard.wait(st.value)
            np.add(st.value, grad, out=st.value)
        else:
            st.free.append(st.value)   # reused once no reply is still sending it
            st.value = grad

    def _take_buffer(self, st):
        for i, buf in enumerate(st.free):
            if not self.guard.busy(buf):
                return st.free.pop(i)
        return np.empty(st.shape, dtype=st.dtype)

    # -- pull ---------------------------------------------------------------------------
    def pull(self, rank, desc, token):
        """Reply with the value of the newest step that includes ``rank``'s ``desc.step`` pushes."""
        st = self.keys.get((desc.key, desc.part))
        if (st is None or st.value is None or st.shape != desc.shape or st.dtype != desc.dtype
                or st.failed is not None):
            st, err = self._checked(desc, "pull")
            return [Reply(token, error=err)]
        self.counters["pulls"][rank] += 1
        if st.sync and desc.step > st.completed:
            st.parked_pulls.append((desc.step, token))
            return []
        return [self._value_reply(st, token)]

    def _value_reply(self, st, token):
        self.counters["bytes_out"] += st.value.nbytes
        desc = ArrayDesc(st.key, st.part, st.dtype, st.shape, st.completed)
        return Reply(token, arrays=[(desc, st.value)])

    # -- optimizer and checks -----------------------------------------------------------
    def set_optimizer(self, optimizer):
        """Install ``optimizer`` for updates from now on; weights stay, state starts fresh."""
        self.optimizer = optimizer
        for st in self.keys.values():
            st.opt_state = None

    def stats(self):
        held = sum(st.value.nbytes for st in self.keys.values() if st.value is not None)
        return dict(self.counters, keys=len(self.keys), held_bytes=held,
                    steps={repr(k): st.completed for k, st in self.keys.items()})

    def _checked(self, desc, op):
        st = self.keys.get((desc.key, desc.part))
        if st is None or st.value is None:
            return None, UninitializedKeyError(desc.key, op)
        return st, st.failed or self._mismatch(st, desc.dtype, desc.shape, op)

    @staticmethod
    def _mismatch(st, dtype, shape, op):
        if tuple(shape) != st.shape:
            return ShapeMismatchError(st.key, st.shape, shape, op)
        if dtype != st.dtype:
            return DTypeMismatchError(st.key, st.dtype, dtype, op)
        return None
