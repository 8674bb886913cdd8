"""``PartitionedDataset``: one worker's share of a sharded dataset, in shuffled batches.

Each epoch, the worker's share (``partition.assign``) is cut into read blocks of about
``read_block_bytes``; the blocks are permuted with a generator seeded by ``(seed, epoch, rank)``,
read ``shuffle_blocks`` at a time (one group, fetched as concurrent byte ranges), and the records
of a group are permuted again before being cut into batches. Groups are read in the background
(``prefetch.Prefetcher``), ``prefetch`` groups ahead. The position (epoch, batches handed out) is
saved by ``state_dict`` and restored by ``load_state_dict``; resuming skips whole groups without
reading them.
"""
import logging
import threading

import numpy as np

from .. import config as psconfig
from ..errors import ConfigError, DataError
from . import partition, readers, retry
from .prefetch import Prefetcher

log = logging.getLogger(__name__)

STATE_VERSION = 1


class PartitionedDataset:
    """A dataset over an fsspec URL or glob, split across workers by rank.

    Args:
        url: a shard file, a directory, or a glob (``s3://bucket/train/*.npz``, ``hdfs://...``,
            ``memory://...``, a local path) of ``.npz`` / ``.npy`` shards.
        batch_size: records per batch.
        shuffle: shuffle each epoch (blocks, then records within a group of blocks).
        seed: shared seed; the same seed gives the same batches on every run.
        drop_last: drop the final partial batch and the records that do not divide evenly among
            workers; otherwise shares are padded by wrapping around to the first records.
        storage_options: fsspec options (``endpoint_url``, ``key``, ``secret``, ``profile``,
            ``client_kwargs``...). Never logged or put into messages.
        prefetch: groups read ahead in a background thread (0: read in the consumer).
        rank, num_workers: override ``psframe.config.from_env()`` (for tests and tools).
        retries: tries per storage call for transient errors, with backoff from ``retry_backoff``.
        timeout: seconds to wait for the background reader before ``PSTimeoutError``.
        read_block_bytes: target size of one ranged read.
        shuffle_blocks: blocks per shuffle group (the shuffle buffer is about
            ``read_block_bytes * shuffle_blocks``).

    Raises:
        DataError: the URL lists no readable shards (missing bucket/prefix, empty glob, stale
            manifest) or a shard header is corrupt.
        ConfigError: bad arguments.
    """

    def __init__(self, url, batch_size, *, shuffle=True, seed=0, drop_last=False,
                 storage_options=None, prefetch=2, rank=None, num_workers=None, retries=4,
                 retry_backoff=0.5, timeout=300.0, read_block_bytes=8 << 20, shuffle_blocks=4):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        if int(prefetch) < 0 or int(retries) < 1 or int(shuffle_blocks) < 1 or timeout <= 0:
            raise ConfigError("need prefetch >= 0, retries >= 1, shuffle_blocks >= 1, timeout > 0")
        if rank is None or num_workers is None:
            cfg = psconfig.from_env()
            rank = cfg.rank if rank is None else rank
            num_workers = cfg.num_workers if num_workers is None else num_workers
        self.url, self.batch_size = str(url), int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.rank, self.num_workers = int(rank), int(num_workers)
        self._prefetch, self._timeout = int(prefetch), float(timeout)
        self._shuffle_blocks = int(shuffle_blocks)
        self._policy = retry.RetryPolicy(attempts=int(retries), backoff=float(retry_backoff))
        self._layouts, self._lock = {}, threading.Lock()
        self._source = partition.open_source(self.url, _with_defaults(self.url, storage_options,
                                                                      self.rank), self._policy)
        self._arrays = self._source.arrays
        if not self._source.counted:
            self._count_from_headers()
        counts = [f.records for f in self._source.files]
        self._share = partition.assign(counts, self.rank, self.num_workers, self.drop_last)
        row_bytes = sum(np.dtype(d).itemsize * int(np.prod(t, dtype=np.int64))
                        for d, t in self._arrays.values())
        self._blocks = partition.split_blocks(self._share.segments,
                                              max(1, int(read_block_bytes) // max(1, row_bytes)))
        per = self._share.per_worker
        self._len = per // self.batch_size if self.drop_last else -(-per // self.batch_size)
        if self._len == 0:
            raise ConfigError(f"each worker gets {per} records, fewer than batch_size="
                              f"{self.batch_size}, and drop_last=True leaves no batch; lower "
                              f"batch_size or set drop_last=False")
        self._epoch, self._batch = 0, 0
        log.info("dataset %s: rank %d/%d reads %d of %d records from %d shard(s), %d batches/epoch",
                 self.url, self.rank, self.num_workers, per, self._share.total,
                 len({s[0] for s in self._share.segments}), self._len)

    # --- public ----------------------------------------------------------------------------
    def __len__(self):
        """Batches per epoch on this worker (the same on every worker)."""
        return self._len

    @property
    def epoch(self):
        """The epoch the next iteration reads."""
        return self._epoch

    @property
    def files(self):
        """URLs of the shards this worker reads (its share only)."""
        return [self._source.files[i].url for i in sorted({s[0] for s in self._share.segments})]

    def set_epoch(self, epoch):
        """Start the next iteration at the beginning of ``epoch`` (reshuffled by it)."""
        if int(epoch) < 0:
            raise ConfigError(f"epoch={epoch} must be >= 0")
        self._epoch, self._batch = int(epoch), 0

    def state_dict(self):
        """The iterator position (JSON/msgpack-able): the next batch to hand out."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "batch": self._batch,
                "seed": self.seed, "batch_size": self.batch_size, "rank": self.rank,
                "num_workers": self.num_workers, "total_records": self._share.total}

    def load_state_dict(self, state):
        """Resume from a ``state_dict()``; the next iteration continues at its batch.

        Raises:
            ConfigError: the state belongs to a different layout (seed, batch size, workers,
                records), so resuming would not give the same batches.
        """
        mine = self.state_dict()
        for key in ("version", "seed", "batch_size", "rank", "num_workers", "total_records"):
            if state.get(key) != mine[key]:
                raise ConfigError(f"dataset state has {key}={state.get(key)!r} but this dataset "
                                  f"has {mine[key]!r}; resume with the same dataset and settings")
        if not 0 <= int(state["batch"]) <= self._len or int(state["epoch"]) < 0:
            raise ConfigError(f"dataset state position {state['epoch']}/{state['batch']} is out of "
                              f"range (0..{self._len} batches)")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        if self._batch == self._len:
            self._epoch, self._batch = self._epoch + 1, 0

    def __iter__(self):
        """Yield this epoch's remaining batches as ``{name: array}``; afterwards the dataset moves
        on to the next epoch (``set_epoch`` overrides)."""
        epoch, first = self._epoch, self._batch
        groups = self._read_groups(epoch, first * self.batch_size)
        if self._prefetch:
            groups = Prefetcher(groups, self._prefetch, self._timeout, name=self.url)
        return self._batches(groups, epoch, first)

    # --- epoch plan and reading ------------------------------------------------------------
    def _plan(self, epoch):
        """The epoch's groups: lists of blocks, plus the seed of each group's record shuffle."""
        order = np.arange(len(self._blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, self.rank]).permutation(order)
        n = self._shuffle_blocks
        return [[self._blocks[i] for i in order[g:g + n]] for g in range(0, len(order), n)]

    def _read_groups(self, epoch, skip):
        for g, blocks in enumerate(self._plan(epoch)):
            size = sum(stop - start for _, start, stop in blocks)
            if skip >= size:
                skip -= size
                continue
            parts = readers.read_rows(self._source.fs, [(self._layout(fi), s, e)
                                                        for fi, s, e in blocks], self._policy)
            arrays = {k: np.concatenate([p[k] for p in parts]) for k in self._arrays}
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch, self.rank, g]).permutation(size)
                arrays = {k: v[perm] for k, v in arrays.items()}
            if skip:
                arrays, skip = {k: v[skip:] for k, v in arrays.items()}, 0
            yield arrays

    def _batches(self, groups, epoch, first):
        bs, carry, index = self.batch_size, None, first
        try:
            for arrays in groups:
                if carry is not None:
                    arrays = {k: np.concatenate([carry[k], arrays[k]]) for k in arrays}
                n = len(next(iter(arrays.values())))
                stop = n - n % bs
                for s in range(0, stop, bs):
                    if index >= self._len:
                        break
                    index = self._hand_out(epoch, index)
                    yield {k: v[s:s + bs] for k, v in arrays.items()}
                carry = {k: v[stop:] for k, v in arrays.items()} if stop < n else None
            if carry is not None and index < self._len:
                index = self._hand_out(epoch, index)
                yield carry
            if index != self._len:
                raise DataError(f"dataset {self.url}: epoch {epoch} ended after {index} of "
                                f"{self._len} batches; a shard changed while the job read it",
                                url=self.url)
            if (self._epoch, self._batch) == (epoch, self._len):
                self._epoch, self._batch = epoch + 1, 0
        finally:
            close = getattr(groups, "close", None)
            if close is not None:
                close()

    def _hand_out(self, epoch, index):
        if (self._epoch, self._batch) == (epoch, index):
            self._batch = index + 1
        return index + 1

    def _layout(self, fi):
        with self._lock:
            layout = self._layouts.get(fi)
        if layout is None:
            layout = self._read_layout(fi)
            with self._lock:
                self._layouts[fi] = layout
        return layout

    def _read_layout(self, fi):
        entry = self._source.files[fi]
        key = next(iter(self._arrays)) if self._arrays else readers.NPY_KEY
        layout = readers.read_layout(self._source.fs, entry.path, entry.url, entry.size,
                                     self._policy, npy_key=key)
        got = {k: (np.dtype(v.dtype).str, tuple(v.tail)) for k, v in layout.arrays.items()}
        want = self._arrays
        if entry.records is not None and layout.num_records != entry.records:
            raise DataError(f"shard {entry.url} has {layout.num_records} records but the manifest "
                            f"says {entry.records}: the shard or the manifest is stale or corrupt; "
                            f"rewrite the dataset with write_partitions", url=entry.url)
        if want is not None and got != {k: (np.dtype(d).str, tuple(t)) for k, (d, t) in
                                        want.items()}:
            raise DataError(f"shard {entry.url} holds arrays {got}, expected {dict(want)}; every "
                            f"shard needs the same array names, dtypes and record shapes",
                            url=entry.url)
        return layout

    def _count_from_headers(self):
        """No manifest: read every shard's header (every worker; write_partitions avoids it)."""
        log.info("dataset %s has no %s; reading the headers of all %d shards to count records",
                 self.url, partition.MANIFEST, len(self._source.files))
        files = []
        for fi, entry in enumerate(self._source.files):
            layout = self._layouts[fi] = self._read_layout(fi)
            if self._arrays is None:
                self._arrays = {k: (v.dtype, v.tail) for k, v in layout.arrays.items()}
            files.append(partition.FileEntry(entry.path, entry.url, entry.size,
                                             layout.num_records))
        self._source = partition.Source(self._source.fs, self._source.url, tuple(files),
                                        self._arrays)


def _with_defaults(url, storage_options, rank):
    """Copy of the options with psframe's S3 defaults: bounded timeouts, and the worker rank in
    the User-Agent so the store's access log shows which worker read which object."""
    options = dict(storage_options or {})
    if str(url).startswith(("s3://", "s3a://")):
        config_kwargs = dict(options.get("config_kwargs") or {})
        config_kwargs.setdefault("connect_timeout", 10)
        config_kwargs.setdefault("read_timeout", 60)
        config_kwargs.setdefault("user_agent_extra", f"psframe-data/rank-{rank}")
        options["config_kwargs"] = config_kwargs
    return options
