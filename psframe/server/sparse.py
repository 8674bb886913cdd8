"""Pure state of one server's parts of sparse keys (embedding tables): rows ``lo..hi-1`` of each
table, the row-sparse pushes of open steps, pulls parked on them. No sockets.

A sparse key's rows are cut into contiguous ranges, one per server (``rowsparse.row_bounds``).
Every call takes a reply ``token`` and returns the ``Reply`` objects that became due.

Sync: the i-th push of every worker forms step i. Once all have arrived, their (id, row) pairs
are concatenated in worker-rank order and rows of equal ids summed in that order (a stable sort
and ``np.add.reduceat``), so a job gives the same bits run after run. Without optimizer the
touched rows become the step's sums; with one, ``optimizer.update_rows`` applies a lazy update
to them. Rows no push of a step named are not changed. Async: each push is applied on arrival
(rows added without optimizer).
"""
import contextlib
import dataclasses

import numpy as np

from ..errors import (ConfigError, DoubleInitError, OptimizerError, SparseRowError, UnevenStepsError,
                      UninitializedKeyError)
from ..protocol import ArrayDesc
from ..rowsparse import coalesce, gather, scatter
from .entry import NoGuard, Reply


@contextlib.contextmanager
def small_pages():
    """Arrays made inside get ordinary 4 KiB pages. numpy asks Linux for 2 MiB transparent huge
    pages for big arrays, so the first write to one row of a sparse key's optimizer state maps
    (and zeroes) 2 MiB: a step touching 20,000 random rows of a 2,000,000 x 64 float32 Adam
    state took 12.7 s and mapped all of it; with small pages 1.2 s, and only the touched rows'
    pages are mapped. On a machine short of free huge pages, mapping a table's huge pages also
    stalled a server past its heartbeat timeout (the kernel compacts memory first). Where numpy
    has no such switch, nothing changes."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:
        yield
        return
    before = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(before)


@dataclasses.dataclass
class SparseTable:
    """Rows ``lo..hi-1`` of sparse key ``key`` (``shape``: the whole table's)."""
    key: object
    dtype: str
    shape: tuple
    lo: int
    hi: int
    sync: bool
    num_workers: int
    value: np.ndarray = None
    ready: bool = False          # rank 0's rows are all in
    inited_by: set = dataclasses.field(default_factory=set)
    parked_inits: list = dataclasses.field(default_factory=list)    # [(token, rank)]
    pushes: list = None          # per rank: pushes received
    completed: int = 0           # steps applied
    merges: dict = dataclasses.field(default_factory=dict)   # step -> [(ids, rows) per rank]
    parked_pulls: list = dataclasses.field(default_factory=list)  # [(step, ids, token, rank, part)]
    opt_state: dict = None
    failed: Exception = None

    def __post_init__(self):
        self.pushes = [0] * self.num_workers


class SparseTables:
    """This server's parts of every sparse key. ``counters``: the shard's counters (shared),
    ``guard``: says when a value is still being sent (written only after)."""

    def __init__(self, num_workers, sync=True, counters=None, guard=None):
        self.num_workers, self.sync = num_workers, sync
        self.tables = {}
        self.optimizer = None
        self.absent = {}        # rank -> True (joined: its missing pushes are empty) or False
                                # (finished: a step that needs its push cannot complete)
        self.guard = guard or NoGuard()
        self.counters = counters if counters is not None else {
            "pushes": [0] * num_workers, "pulls": [0] * num_workers, "bytes_in": 0, "bytes_out": 0,
            "updates": 0, "bytes_in_by_rank": [0] * num_workers, "bytes_out_by_rank": [0] * num_workers}

    # -- init ---------------------------------------------------------------------------
    def init(self, rank, key, dtype, shape, lo, hi, token, sync=None, offset=None, rows=None, last=True):
        """Worker ``rank`` initialises this server's rows ``lo..hi-1`` of ``key``. Rank 0 sends
        its values in chunks (``rows`` starting at global row ``offset``), ``last`` on the final
        one; the other workers only declare the key. Replies once rank 0's rows are all in."""
        sync = self.sync if sync is None else sync
        st = self.tables.get(key)
        if st is None:
            if not (len(shape) == 2 and 0 <= lo <= hi <= shape[0]):
                raise SparseRowError(f"sparse key {key!r}: rows {lo}..{hi} of a table of shape "
                                     f"{tuple(shape)}: a sparse key is a 2-d (rows, dim) table")
            if self.optimizer is not None:
                self.optimizer.check_sparse()
            st = self.tables[key] = SparseTable(key, dtype, tuple(shape), lo, hi, sync, self.num_workers)
            # np.zeros: pages are mapped as rank 0's chunks are copied in, never twice; small
            # pages, as huge ones can stall the server (compaction) on a busy machine
            with small_pages():
                st.value = np.zeros((hi - lo, shape[1]), dtype=dtype)
        elif (st.dtype, st.shape, st.lo, st.hi, st.sync) != (dtype, tuple(shape), lo, hi, sync):
            return [Reply(token, error=ConfigError(
                f"sparse key {key!r}: worker {rank} initialised it as {dtype}{tuple(shape)} "
                f"({'dist_sync' if sync else 'dist_async'}), another worker as "
                f"{st.dtype}{st.shape} ({'dist_sync' if st.sync else 'dist_async'}); initialise "
                f"it alike on every worker"))]
        if rank in st.inited_by:
            return [Reply(token, error=DoubleInitError(key, rank))]
        if rows is not None:
            start = offset - st.lo
            if rank != 0 or start < 0 or start + len(rows) > st.hi - st.lo or rows.shape[1:] != st.shape[1:]:
                return [Reply(token, error=SparseRowError(
                    f"init of sparse key {key!r}: rows {offset}..{offset + len(rows) - 1} "
                    f"(dim {rows.shape[1:]}) do not fit this server's rows {st.lo}..{st.hi - 1}"))]
            st.value[start:start + len(rows)] = rows
        if not last:
            return [Reply(token)]
        st.inited_by.add(rank)
        st.parked_inits.append(token)
        st.ready = st.ready or rank == 0
        if not st.ready:
            return []
        replies = [Reply(t) for t in st.parked_inits]
        st.parked_inits = []
        return replies

    # -- push ---------------------------------------------------------------------------
    def push(self, rank, key, step, ids, rows, token):
        """Merge (sync) or apply (async) worker ``rank``'s push of ``rows`` at global ``ids``."""
        st, err = self._lookup(key, rows.dtype.name, rows.shape[1:], ids, "push")
        if err is not None:
            return [Reply(token, error=err)]
        self.counters["pushes"][rank] += 1
        self.counters["bytes_in"] += ids.nbytes + rows.nbytes
        self.counters["bytes_in_by_rank"][rank] += ids.nbytes + rows.nbytes
        if not st.sync:
            st.pushes[rank] += 1
            return self._apply(st, ids, rows, [token] if token is not None else [])
        if step != st.pushes[rank] + 1:
            return [Reply(token, error=SparseRowError(
                f"push of sparse key {key!r} from worker {rank} is step {step}, expected "
                f"{st.pushes[rank] + 1}: a message was lost or a worker restarted"))]
        st.pushes[rank] = step
        merge = st.merges.setdefault(step, [None] * self.num_workers + [[]])
        merge[rank] = (ids, rows)
        if token is not None:
            merge[-1].append(token)
        return self._complete_ready(st)

    def _complete_ready(self, st):
        replies = []
        try:
            while st.completed + 1 in st.merges and self._ready(st, st.completed + 1):
                replies += self._complete(st, st.merges.pop(st.completed + 1))
        except UnevenStepsError as exc:
            return replies + self._fail(st, exc, [])
        return replies

    def _ready(self, st, step):
        """Whether every worker's push of ``step`` is in (a joined worker's missing one counts
        as a push of no rows).

        Raises:
            UnevenStepsError: a worker that finished never pushed it.
        """
        merge = st.merges[step]
        for r in range(self.num_workers):
            if merge[r] is None:
                joined = self.absent.get(r)
                if joined is None:
                    return False
                if not joined:
                    raise UnevenStepsError.worker_finished(step, st.key, r, st.pushes[r], "sparse key")
        return True

    def leave(self, rank, joined):
        """Worker ``rank`` pushes no more (all its pushes are in). Joined: its missing pushes
        count as pushes of no rows; finished: a step that needs one fails now, naming it."""
        self.absent[rank] = bool(joined)
        replies = []
        for st in self.tables.values():
            if st.sync and st.failed is None:
                replies += self._complete_ready(st)
        return replies

    def _complete(self, st, merge):
        """Sum step ``completed + 1``'s pushes in rank order and apply them."""
        parts = [m for m in merge[:-1] if m is not None and len(m[0])]
        if len(parts) == 1:
            ids, rows = parts[0]
        elif parts:
            ids = np.concatenate([p[0] for p in parts])
            rows = np.concatenate([p[1] for p in parts])
        else:
            ids, rows = np.empty(0, np.int64), np.empty((0,) + st.shape[1:], st.dtype)
        ids, rows = coalesce(ids, rows)
        replies = self._apply(st, ids, rows, merge[-1])
        due = [p for p in st.parked_pulls if p[0] <= st.completed]
        if due:
            st.parked_pulls = [p for p in st.parked_pulls if p[0] > st.completed]
            replies += [self._rows_reply(st, *p[1:]) for p in due]
        return replies

    def _apply(self, st, ids, rows, tokens):
        """Apply one step's (or an async push's) summed ``rows`` at ``ids``; acks ``tokens``."""
        local = ids - st.lo
        self.guard.wait(st.value)
        try:
            if self.optimizer is not None:
                if st.opt_state is None:
                    with small_pages():
                        st.opt_state = self.optimizer.create_state(st.key, st.value)
                ids_u, rows_u = coalesce(local, rows) if not st.sync else (local, rows)
                self.optimizer.update_rows(st.key, st.value, ids_u, rows_u, st.opt_state)
            elif st.sync:
                scatter(st.value, local, rows)
            else:
                ids_u, rows_u = coalesce(local, rows)
                scatter(st.value, ids_u, gather(st.value, ids_u) + rows_u)
        except Exception as exc:
            return self._fail(st, OptimizerError.wrapping(
                exc, f"the update of sparse key {st.key!r} (step {st.completed + 1}) raised",
                "the key cannot be used any more"), tokens)
        st.completed += 1
        self.counters["updates"] += 1
        return [Reply(t) for t in tokens]

    @staticmethod
    def _fail(st, exc, tokens):
        """The table is unusable from now on: everyone waiting on it gets ``exc``."""
        st.failed = exc
        waiting = list(tokens) + [t for m in st.merges.values() for t in m[-1]]
        waiting += [p[2] for p in st.parked_pulls]
        st.parked_pulls, st.merges = [], {}
        return [Reply(t, error=exc) for t in waiting]

    # -- pull ---------------------------------------------------------------------------
    def pull(self, rank, key, step, ids, token, part=0):
        """Rows ``ids`` (global; None: all of this server's rows) of the newest step that
        includes ``rank``'s push ``step``; the reply's array is named ``(key, part)``."""
        st, err = self._lookup(key, None, None, ids, "pull")
        if err is not None:
            return [Reply(token, error=err)]
        self.counters["pulls"][rank] += 1
        if st.sync and step > st.completed:
            st.parked_pulls.append((step, ids, token, rank, part))
            return []
        return [self._rows_reply(st, ids, token, rank, part)]

    def _rows_reply(self, st, ids, token, rank, part):
        value = st.value if ids is None else gather(st.value, ids - st.lo)
        desc = ArrayDesc(st.key, part, st.dtype, value.shape, st.completed)
        self.counters["bytes_out"] += value.nbytes
        self.counters["bytes_out_by_rank"][rank] += value.nbytes
        return Reply(token, arrays=[(desc, value)])

    # -- optimizer, stats, checks -------------------------------------------------------
    def set_optimizer(self, optimizer):
        """Install ``optimizer``; state starts fresh. Raises ``OptimizerError`` when a sparse
        key exists and the optimizer cannot update it (nothing is changed then)."""
        if self.tables:
            optimizer.check_sparse()
        self.optimizer = optimizer
        for st in self.tables.values():
            st.opt_state = None

    def stats(self):
        held = sum(st.value.nbytes for st in self.tables.values())
        return held, {repr((k, "sparse")): st.completed for k, st in self.tables.items()}

    def _lookup(self, key, dtype, dim, ids, op):
        st = self.tables.get(key)
        if st is None or not st.ready:
            return None, UninitializedKeyError(key, op)
        if st.failed is not None:
            return None, st.failed
        if dtype is not None and (dtype != st.dtype or tuple(dim) != st.shape[1:]):
            return None, SparseRowError(f"{op} of sparse key {key!r}: rows of {dtype}{tuple(dim)}, "
                                        f"the table's rows are {st.dtype}{st.shape[1:]}")
        if ids is not None and ids.size and (ids.min() < st.lo or ids.max() >= st.hi):
            bad = int(ids.min()) if ids.min() < st.lo else int(ids.max())
            return None, SparseRowError(f"{op} of sparse key {key!r}: row id {bad} is not among "
                                        f"this server's rows {st.lo}..{st.hi - 1}")
        return st, None
