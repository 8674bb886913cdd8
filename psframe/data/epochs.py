"""One worker's epochs as a stream of shuffled record groups (no threads, no batching).

The worker's share is cut into read blocks; each epoch the blocks are permuted with a generator
seeded by ``(seed, epoch, rank)`` and read ``shuffle_blocks`` at a time (one group, fetched as
concurrent byte ranges); a group's records are permuted again by ``(seed, epoch, rank, group)``.
So the same seed gives the same stream on every run, and a resume can skip whole groups without
reading them. Shard headers are read lazily, once, and only for this worker's shards.
"""
import collections
import dataclasses
import logging
import threading

import numpy as np

from ..errors import DataError
from . import partition, readers

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Shuffle:
    """Shuffle settings: on/off, the shared seed, and blocks per shuffle group."""
    enabled: bool
    seed: int
    group_blocks: int


class EpochReader:
    """Reads the groups of an epoch for one worker.

    Args:
        source: a listed ``partition.Source``; headers are read for uncounted shards.
        policy: a ``retry.RetryPolicy``.
    """

    def __init__(self, source, policy):
        self._policy = policy
        self._layouts, self._lock = {}, threading.Lock()
        self.arrays = source.arrays
        self.source = source
        if not source.counted:
            self.source = self._count_from_headers(source)

    def configure(self, share, rank, shuffle, read_block_bytes):
        """Fix this worker's share and shuffle; cut the share into read blocks."""
        self.rank, self.shuffle = rank, shuffle
        row_bytes = sum(np.dtype(d).itemsize * int(np.prod(t, dtype=np.int64))
                        for d, t in self.arrays.values())
        self.blocks = partition.split_blocks(
            share.segments, max(1, int(read_block_bytes) // max(1, row_bytes)))

    def plan(self, epoch):
        """The epoch's groups, each a list of ``(file_index, start, stop)`` blocks."""
        order = np.arange(len(self.blocks))
        if self.shuffle.enabled:
            order = np.random.default_rng([self.shuffle.seed, epoch, self.rank]).permutation(order)
        n = self.shuffle.group_blocks
        return [[self.blocks[i] for i in order[g:g + n]] for g in range(0, len(order), n)]

    def groups(self, epoch, skip=0):
        """Yield ``(is_last, {name: array})`` per group of the epoch, after skipping ``skip``
        records."""
        plan = self.plan(epoch)
        # Shards that must be read whole (compressed .npz) are downloaded and inflated once per
        # epoch: kept in ``whole`` until the epoch's last block of that shard has been read.
        whole, blocks_left = {}, collections.Counter(fi for blocks in plan for fi, _, _ in blocks)
        for g, blocks in enumerate(plan):
            size = sum(stop - start for _, start, stop in blocks)
            for fi, _, _ in blocks:
                blocks_left[fi] -= 1
            if skip >= size:
                skip -= size
                continue
            parts = readers.read_rows(self.source.fs, [(self.layout(fi), s, e)
                                                       for fi, s, e in blocks], self._policy,
                                      whole)
            for fi, _, _ in blocks:
                if not blocks_left[fi]:
                    whole.pop(self.layout(fi).path, None)
            arrays = {k: np.concatenate([p[k] for p in parts]) for k in self.arrays}
            if self.shuffle.enabled:
                perm = np.random.default_rng([self.shuffle.seed, epoch, self.rank, g]) \
                    .permutation(size)
                arrays = {k: v[perm] for k, v in arrays.items()}
            if skip:
                arrays, skip = {k: v[skip:] for k, v in arrays.items()}, 0
            yield g == len(plan) - 1, arrays

    def layout(self, fi):
        """The ``readers.ShardLayout`` of file ``fi`` (headers read on first use)."""
        with self._lock:
            layout = self._layouts.get(fi)
        if layout is None:
            layout = self._read_layout(fi, self.source.files[fi])
            with self._lock:
                self._layouts[fi] = layout
        return layout

    def _read_layout(self, fi, entry):
        key = next(iter(self.arrays)) if self.arrays else readers.NPY_KEY
        layout = readers.read_layout(self.source.fs, entry.path, entry.url, entry.size,
                                     self._policy, npy_key=key)
        if entry.records is not None and layout.num_records != entry.records:
            raise DataError(f"shard {entry.url} has {layout.num_records} records but the manifest "
                            f"says {entry.records}: the shard or the manifest is stale or corrupt; "
                            f"rewrite the dataset with write_partitions", url=entry.url)
        got = {k: (np.dtype(v.dtype).str, tuple(v.tail)) for k, v in layout.arrays.items()}
        if self.arrays is not None and got != {k: (np.dtype(d).str, tuple(t))
                                               for k, (d, t) in self.arrays.items()}:
            raise DataError(f"shard {entry.url} holds arrays {got}, expected {dict(self.arrays)}; "
                            f"every shard needs the same array names, dtypes and record shapes",
                            url=entry.url)
        return layout

    def _count_from_headers(self, source):
        """No manifest: read every shard's header (on every worker; write_partitions' manifest
        avoids this)."""
        log.info("dataset %s has no %s; reading the headers of all %d shards to count records",
                 source.url, partition.MANIFEST, len(source.files))
        files = []
        for fi, entry in enumerate(source.files):
            layout = self._layouts[fi] = self._read_layout(fi, entry)
            if self.arrays is None:
                self.arrays = {k: (v.dtype, v.tail) for k, v in layout.arrays.items()}
            files.append(partition.FileEntry(entry.path, entry.url, entry.size,
                                             layout.num_records))
        return partition.Source(source.fs, source.url, tuple(files), self.arrays)
