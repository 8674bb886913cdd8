"""The order of a sync step's sum: each push is added at its turn, in (host, local rank) order
(an array that arrives early waits, unsummed; a whole host's sum counts for all its workers); a
joined worker's turn is a zero push, a finished worker's turn fails the step. ``ShardState``
(``shard.py``) is built on it."""
import numpy as np

from ..errors import UnevenStepsError
from .entry import EarlyPush, Reply, high, low


class RankOrder:
    """How ``ShardState`` merges a step. It provides ``keys``, ``absent`` (rank -> joined),
    ``hosts``, ``num_workers``, ``owns_pushes``, ``_take_buffer(st)`` and
    ``_complete_steps(st)``."""

    # -- workers that finished or joined ------------------------------------------------
    def leave(self, rank, joined):
        """Worker ``rank`` pushes no more (all its pushes are in: it flushed first). Joined: its
        missing pushes of every later step count as zero. Finished: every step that needs one
        fails now, naming it. Returns the replies that became due."""
        self.absent[rank] = bool(joined)
        replies = []
        for st in self.keys.values():
            try:
                for step in sorted(st.merges):
                    self._sum_in_rank_order(st, st.merges[step], step)
                replies += self._complete_steps(st)
            except UnevenStepsError as exc:
                replies += self._fail_uneven(st, exc)
        return replies

    def _fill_absent(self, st, merge, step):
        """A zero push, at its turn, for every rank absent from ``step`` (a joined worker) that
        no host sum covers: the sum keeps its (host, local rank) order. True if one was added."""
        next_rank, n, added = merge.next_rank, self.num_workers, False
        for m in range(len(st.names)):
            r = int(next_rank[m])
            if (r >= n or r not in self.absent or st.pushes[r, m] >= step
                    or st.pushes[:, m].max() < step):    # nobody pushed it: others ran ahead
                continue
            if not self.absent[r]:
                raise UnevenStepsError.worker_finished(step, st.names[m], r, int(st.pushes[r, m]))
            if any(e.rank == r and e.lo <= m < e.hi for e in merge.early):
                continue
            if self.hosts.covered(r, self.absent):     # its host's sum counts it as zero
                continue
            st.pushes[r, m] = step
            size = st.bounds[m + 1] - st.bounds[m]
            merge.early.append(EarlyPush(r, 1, m, m + 1, np.zeros(size, st.dtype)))
            added = True
        return added

    def _fail_uneven(self, st, exc):
        """Everyone waiting on the entry's steps gets ``exc``; later calls on it too."""
        st.failed = exc
        waiting = [a.token for m in st.merges.values() for a in m.tokens]
        waiting += [p.token for p in st.parked_pulls]
        st.parked_pulls = []
        for m in st.merges.values():
            m.tokens = []
        return [Reply(t, error=exc) for t in waiting]

    def _sum_in_rank_order(self, st, merge, step):
        """Add every early array whose turn has come; True if a member's step became complete.
        An array spanning members at different turns is split into one entry per member."""
        early, next_rank, bounds = merge.early, merge.next_rank, st.bounds
        completed_any, progress = False, True
        while progress:
            progress = bool(self.absent) and self._fill_absent(st, merge, step)
            if not early:
                break
            for entry in list(early):
                rank, count, lo, hi, flat = entry.rank, entry.count, entry.lo, entry.hi, entry.flat
                if low(next_rank, lo, hi) == rank and high(next_rank, lo, hi) == rank:
                    early.remove(entry)
                    self._add_in_order(st, merge, entry)
                    next_rank[lo:hi] += count
                    completed_any = completed_any or rank + count == self.num_workers
                    progress = True
                elif hi - lo > 1 and (next_rank[lo:hi] == rank).any():
                    early.remove(entry)
                    start = bounds[lo]
                    early.extend(EarlyPush(rank, count, m, m + 1,
                                           flat[bounds[m] - start:bounds[m + 1] - start])
                                 for m in range(lo, hi))
                    progress = True
        return completed_any

    def _add_in_order(self, st, merge, e):
        """Add push ``e`` whose turn it is. The first host's pushes go straight into the step's
        sum (rank 0's whole array may become it); a later host's are summed on their own first
        (``host_acc``), and that sum is added once the host's last worker is in."""
        first, size, _ = self.hosts.of(e.rank)
        if first == 0 or e.count > 1 or size == 1:    # a host's sum, or part of the first host's
            merge.acc = self._accumulate(st, merge.acc, e.rank == 0, e.lo, e.hi, e.flat)
            return
        merge.host_acc = self._accumulate(st, merge.host_acc, e.rank == first, e.lo, e.hi, e.flat)
        if e.rank == first + size - 1:
            host_sum = merge.host_acc[st.bounds[e.lo]:st.bounds[e.hi]]
            merge.acc = self._accumulate(st, merge.acc, False, e.lo, e.hi, host_sum)

    def _accumulate(self, st, acc, starts, lo, hi, flat):
        """``acc`` (a flat sum, or None) with ``flat`` copied (``starts``) or added into members
        ``lo..hi-1``; a whole owned array that starts a sum becomes the sum itself."""
        if (acc is None and starts and self.owns_pushes and hi - lo == len(st.names)
                and flat.flags.writeable):
            return flat
        if acc is None:
            acc = self._take_buffer(st)
        target = acc[st.bounds[lo]:st.bounds[hi]]
        if starts:
            np.copyto(target, flat)
        else:
            np.add(target, flat, out=target)
        return acc
