"""``PartitionedDataset``: one worker's share of a sharded dataset, in shuffled batches.

Listing and balancing live in ``partition``, the epoch's shuffled record groups in ``epochs``,
the background thread in ``prefetch``; this module owns the public object: the position (epoch,
batches handed out) that ``state_dict``/``load_state_dict`` save and restore, batching, and
read-ahead across epochs: the background reader runs on from one epoch into the next, and
``__iter__`` picks that stream up when the position matches, so the first batches of an epoch do
not wait for storage either.
"""
import logging
import weakref

import numpy as np

from .. import config as psconfig
from ..errors import ConfigError, DataError
from . import partition, retry
from .epochs import EpochReader, Shuffle
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
        policy = retry.RetryPolicy(attempts=int(retries), backoff=float(retry_backoff))
        source = partition.open_source(self.url, _with_defaults(self.url, storage_options,
                                                                self.rank), policy)
        self._reader = EpochReader(source, policy)
        self._share = partition.assign([f.records for f in self._reader.source.files], self.rank,
                                       self.num_workers, self.drop_last)
        self._reader.configure(self._share, self.rank,
                               Shuffle(self.shuffle, self.seed, int(shuffle_blocks)),
                               read_block_bytes)
        self._ahead = []    # [(epoch, batch), Prefetcher] read ahead for the next iteration
        weakref.finalize(self, _close_ahead, self._ahead)
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
        files = self._reader.source.files
        return [files[i].url for i in sorted({s[0] for s in self._share.segments})]

    def set_epoch(self, epoch):
        """Start the next iteration at the beginning of ``epoch`` (reshuffled by it)."""
        if int(epoch) < 0:
            raise ConfigError(f"epoch={epoch} must be >= 0")
        self._epoch, self._batch = int(epoch), 0
        if self._ahead and self._ahead[0] != (self._epoch, 0):
            _close_ahead(self._ahead)

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

    def close(self):
        """Stop any read-ahead (also done when the dataset is garbage-collected)."""
        _close_ahead(self._ahead)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        """Yield this epoch's remaining batches as ``{name: array}``; afterwards the dataset moves
        on to the next epoch (``set_epoch`` overrides). One iteration at a time."""
        key = (self._epoch, self._batch)
        groups = self._ahead[1] if self._ahead and self._ahead[0] == key else None
        if groups is None:
            _close_ahead(self._ahead)
            groups = self._groups(*key)
        else:
            self._ahead.clear()
        return self._batches(groups, *key)

    def _groups(self, epoch, first):
        groups = _stream(self._reader, epoch, first * self.batch_size)
        if self._prefetch:
            groups = Prefetcher(groups, self._prefetch, self._timeout, name=self.url)
        return groups

    def _batches(self, groups, epoch, first):
        bs, carry, index, handed_over = self.batch_size, None, first, False
        try:
            for group_epoch, last, arrays in groups:
                if group_epoch != epoch:
                    raise RuntimeError(f"read-ahead of epoch {group_epoch} used for epoch {epoch}")
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
                if last:
                    break
            if carry is not None and index < self._len:
                index = self._hand_out(epoch, index)
                yield carry
            if index != self._len:
                raise DataError(f"dataset {self.url}: epoch {epoch} ended after {index} of "
                                f"{self._len} batches; a shard changed while the job read it",
                                url=self.url)
            if (self._epoch, self._batch) == (epoch, self._len):
                self._epoch, self._batch = epoch + 1, 0
            _close_ahead(self._ahead)   # the reader is already into the next epoch: keep it
            self._ahead[:] = [(epoch + 1, 0), groups]
            handed_over = True
        finally:
            close = getattr(groups, "close", None)
            if close is not None and not handed_over:
                close()

    def _hand_out(self, epoch, index):
        if (self._epoch, self._batch) == (epoch, index):
            self._batch = index + 1
        return index + 1


def _stream(reader, epoch, skip):
    """``(epoch, is_last, group)`` from ``epoch`` on, running on into the following epochs (the
    consumer stops at the end of its epoch and keeps the rest for the next iteration)."""
    while True:
        for last, arrays in reader.groups(epoch, skip):
            yield epoch, last, arrays
        epoch, skip = epoch + 1, 0


def _close_ahead(ahead):
    if ahead:
        ahead[1].close()
        ahead.clear()


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
