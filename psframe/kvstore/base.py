"""The ``KVStore`` interface every kind implements, and the argument checks they share.

Kinds implement ``server_stats`` and ``_init``, ``_push``, ``_pull``, ``_pushpull``, ``_set_optimizer``,
``_barrier``, ``_close`` on normalised arguments: lists of keys, one host or device array per
key for values (device lists already summed), one list of output arrays per key for outs.
Sparse keys go one key per call to ``_init_sparse``, ``_push_sparse`` and ``_rows_call``, with
row ids checked, sorted and (for pushes) their duplicate rows summed.
"""
import abc

import numpy as np

from .. import arrays, compression, rowsparse
from ..aggregation.reduce import sum_arrays
from ..errors import (ConfigError, DoubleInitError, DTypeMismatchError, ShapeMismatchError,
                      SparseRowError, UninitializedKeyError)
from ..rowsparse import RowSparse
from .arguments import (OUTPUT_OPS, PUSHPULL_OUT, KeyInfo, all_arrays, dtype_name, is_array, is_key,
                        normalise)


class KVStore(abc.ABC):
    """A key-value store of arrays shared by the workers of a job (docs/api.md)."""

    type = "base"
    timeline = None       # the process's PSFRAME_TIMELINE trace (dist kinds), else None

    def __init__(self, rank=0, num_workers=1, local_rank=0, local_size=1):
        self.rank, self.num_workers = rank, num_workers
        self.local_rank, self.local_size = local_rank, local_size
        self._keys = {}
        self._sparse_keys = set()    # keys initialised with sparse=True
        self._closed = False
        self._closed_by = None       # why the store closed itself (said by later calls)
        self._pushed = False         # gradient compression is fixed by the first push
        self._compressor = None      # compression.GradientCompressor, once set

    # -- public API ---------------------------------------------------------------------
    def init(self, key, value, sparse=False):
        """Create keys with initial values; rank 0's value wins. Every worker returns only
        once the key is initialised. ``sparse=True``: each value is a 2-d ``(rows, dim)`` table
        whose rows are spread over all servers and moved as ``RowSparse`` (docs/api.md).

        Raises:
            DoubleInitError: the key was initialised before by this worker.
        """
        keys, vals = normalise(key, value, "init")
        if sparse:
            return self._init_sparse_keys(keys, vals)
        hosts = []
        for k, v in zip(keys, vals):
            if k in self._keys:
                raise DoubleInitError(k, self.rank)
            a = arrays.to_host(v[0])
            hosts.append(a)
        self._check_open()
        for k, a in zip(keys, hosts):
            self._keys[k] = KeyInfo(arrays.shape_of(a), dtype_name(k, a, "init"))
        try:
            self._init(keys, hosts)
        except Exception:
            for k in keys:
                self._keys.pop(k, None)
            raise

    def push(self, key, value, priority=0):
        """Push values (an array, or a list of arrays per key, summed here first). Returns once
        the buffers are handed off; the servers merge asynchronously."""
        if self._sparse_info(key, value, "push") is not None:
            ids, rows = self._sparse_value(key, value, "push")
            return self._push_sparse(key, ids, rows)
        keys, vals = self._checked(key, value, "push")
        self._pushed = True
        self._push(keys, [sum_arrays(v) for v in vals], priority)

    def pull(self, key, out, priority=0, row_ids=None):
        """Fill ``out`` (an array or a list of arrays per key) with the newest value that
        includes this worker's own last push. A sparse key: ``row_ids`` names the rows
        (``out``: ``(len(row_ids), dim)``), None pulls the whole table."""
        if self._sparse_info(key, None, "pull", row_ids) is not None:
            return self._pull_rows(key, row_ids, out, None)
        keys, outs = self._checked(key, out, "pull")
        self._pull(keys, outs, priority)

    def pushpull(self, key, value, out=None, priority=0, row_ids=None):
        """push then pull in one round trip; ``out=None`` writes the result into ``value``.
        A sparse key: ``value`` is a ``RowSparse``; ``row_ids`` (default: the pushed ids) are
        the rows pulled into ``out`` (default: ``value.values``)."""
        if self._sparse_info(key, value, "pushpull", row_ids) is not None:
            ids, rows = self._sparse_value(key, value, "pushpull")
            pull_ids = value.row_ids if row_ids is None else row_ids
            return self._pull_rows(key, pull_ids, value.values if out is None else out, (ids, rows))
        if out is None and not all_arrays(value):
            raise TypeError("pushpull of plain Python numbers needs out= (an array to write the "
                            "result into); with out=None the result goes back into value")
        keys, vals = self._checked(key, value, "pushpull")
        outs = vals if out is None else self._checked(key, out, PUSHPULL_OUT)[1]
        self._pushed = True
        self._pushpull(keys, [sum_arrays(v) for v in vals], outs, priority)

    def pushpull_async(self, key, value, out=None, priority=0):
        """``pushpull`` that returns at once, with a ``Pending`` whose ``wait()`` returns once
        ``out`` holds the result. Until then ``value`` and ``out`` belong to the store (zmq may
        still be sending ``value`` without a copy): do not write to either, and do not call
        ``pushpull_async`` on the same keys again before waiting."""
        if out is None and not all_arrays(value):
            raise TypeError("pushpull_async of plain Python numbers needs out= (an array to write "
                            "the result into)")
        keys, vals = self._checked(key, value, "pushpull")
        outs = vals if out is None else self._checked(key, out, PUSHPULL_OUT)[1]
        return self._pushpull_start(keys, [sum_arrays(v) for v in vals], outs, priority)

    def set_optimizer(self, optimizer):
        """Have the servers apply ``optimizer`` to every update from now on (weights kept)."""
        from .. import optim
        self._check_open()
        self._set_optimizer(optim.to_spec(optimizer))

    def save_checkpoint(self, url, worker_state=None, storage_options=None):
        """Write a checkpoint of the whole job to ``url`` (any fsspec URL; a directory): every
        server writes its shard (values, optimizer state, steps) in parallel, then rank 0 the
        manifest, last. Every worker must call it; each may pass its own small ``worker_state``
        (a dict of arrays, numbers, strings, lists), which ``load_checkpoint`` returns to it.
        Format and resuming: docs/checkpoints.md.

        Raises:
            CheckpointError: storage failed (the message names the file); the checkpoint is
                then incomplete and ``psframe.checkpoint.latest`` skips it.
            ConfigError: a key is not initialised or failed.
        """
        self._check_open()
        self._no_sparse_keys("save_checkpoint")
        self._save_checkpoint(str(url), worker_state, storage_options)

    def load_checkpoint(self, url, storage_options=None):
        """Replace values, optimizer state and step counts with the checkpoint at ``url``, and
        return this rank's ``worker_state`` (None if it saved none). Call it after the same
        ``init`` and ``set_optimizer`` calls as the saving job (any number of servers). Every
        worker must call it.

        Raises:
            CheckpointError: incomplete or corrupt checkpoint (naming the file), or keys,
                shapes, dtypes or optimizer differ from the saving job.
        """
        self._check_open()
        self._no_sparse_keys("load_checkpoint")
        return self._load_checkpoint(str(url), storage_options)

    def set_gradient_compression(self, config):
        """Compress every pushed gradient of a float key from now on (inits and pulls never are):
        ``{"type": "2bit", "threshold": t}`` sends each element as +t, -t or 0 (16 to a 32-bit
        word) and keeps what it did not send in a per-key residual added to the next push;
        ``{"type": "fp16"}`` sends float16; ``{"type": "none"}`` sends as is. Servers decode and
        sum in the key's dtype. Call it on every worker, with the same config, before the first
        push (see docs/compression.md).

        Raises:
            ConfigError: a bad config, a call after this worker's first push, or (dist kinds)
                workers that set different configs.
        """
        self._check_open()
        spec = compression.from_user(config)
        if self._pushed:
            raise ConfigError(
                "set_gradient_compression must be called before the first push (this worker has "
                "pushed already, and the servers have summed those pushes uncompressed); call it "
                "right after psframe.create(), on every worker")
        self._set_compression(spec)

    def _set_compression(self, spec):
        """Install ``spec`` (None: no compression); dist kinds first check that workers agree."""
        self._compressor = compression.GradientCompressor(spec) if spec is not None else None

    def barrier(self, timeout=None):
        """Return once every worker of the job called ``barrier``."""
        self._check_open()
        self._barrier(timeout)

    def join(self, timeout=None):
        """This worker ran out of data (uneven inputs): until every worker has joined, its
        missing pushes count as zero gradients in every later sync step, so the others finish
        their epochs. Returns once every worker joined or closed (``timeout`` s at most; None:
        as long as the job lives). Push nothing after it; ``close`` as usual."""
        self._check_open()
        self._join(timeout)

    @abc.abstractmethod
    def server_stats(self, timeout=None):
        """Counters of every server, one dict per server (the ``local`` kind: its in-process
        shard): ``pushes`` and ``pulls`` per worker rank, ``bytes_in``, ``bytes_out``,
        ``updates``, ``keys``, ``held_bytes`` and ``steps``, and in a distributed job the
        server process's ``pid``, ``cpu_s`` and RSS; for tests, benches and progress reports."""

    def close(self):
        """Finish: wait for outstanding requests, tell the job this worker is done."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self.close()
        elif not self._closed:
            self._abandon(exc)

    def _abandon(self, exc):
        """Close after ``exc`` ended the ``with`` block (dist kinds also stop the job)."""
        self.close()

    # -- checks -------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            why = f" ({self._closed_by})" if self._closed_by else ""
            raise ConfigError(f"this KVStore is closed{why}; create a new one with psframe.create()")

    def _checked(self, key, value, op):
        self._check_open()
        keys, vals = normalise(key, value, op, self._keys, op in OUTPUT_OPS)
        for k, v in zip(keys, vals):
            info = self._keys.get(k)
            if info is None:
                raise UninitializedKeyError(k, op)
            for a in v:
                shape, dtype = arrays.shape_of(a), dtype_name(k, a, op)
                if shape != info.shape:
                    raise ShapeMismatchError(k, info.shape, shape, op)
                if dtype != info.dtype:
                    raise DTypeMismatchError(k, info.dtype, dtype, op)
        return keys, vals

    # -- sparse keys --------------------------------------------------------------------
    def _init_sparse_keys(self, keys, vals):
        self._check_open()
        for k, v in zip(keys, vals):
            if k in self._keys:
                raise DoubleInitError(k, self.rank)
            a = arrays.to_host(v[0])
            if a.ndim != 2:
                raise SparseRowError(f"init of sparse key {k!r}: value has shape {a.shape}; a sparse "
                                     f"key is a 2-d (rows, dim) table")
            self._keys[k] = info = KeyInfo(arrays.shape_of(a), dtype_name(k, a, "init"))
            info.rows = rowsparse.row_bounds(a.shape[0], self._row_servers())
            try:
                self._init_sparse(k, np.ascontiguousarray(a))
            except Exception:
                self._keys.pop(k, None)
                raise
            self._sparse_keys.add(k)

    def _sparse_info(self, key, value, op, row_ids=None):
        """The KeyInfo of ``key`` if it is one sparse key (None for dense keys), checking that
        sparse values go to sparse keys only."""
        sparse_value = isinstance(value, RowSparse)
        if not self._sparse_keys and not sparse_value and row_ids is None:
            return None                  # the dense hot path: no sparse key exists
        self._check_open()
        info = self._keys.get(key) if is_key(key) else None
        if info is None or info.rows is None:
            if sparse_value or row_ids is not None:
                named = [key] if is_key(key) else list(key) if isinstance(key, (list, tuple)) else [key]
                raise SparseRowError(f"{op} of key {named[0] if len(named) == 1 else named!r}: "
                                     f"RowSparse values and row_ids are for sparse keys, one key "
                                     f"per call (kv.init(key, table, sparse=True))")
            if isinstance(key, (list, tuple)) and any(is_key(k) and k in self._sparse_keys for k in key):
                raise SparseRowError(f"{op}: sparse keys go one key per call, not in a list")
            return None
        if op != "pull" and not sparse_value:
            raise SparseRowError(f"{op} of sparse key {key!r}: pass psframe.RowSparse(row_ids, "
                                 f"values), not a {type(value).__name__}")
        return info

    def _sparse_value(self, key, value, op):
        """``(ids, rows)`` of a RowSparse push: checked, duplicate ids summed, sorted."""
        info = self._keys[key]
        ids = rowsparse.check_ids(key, value.row_ids, info.shape[0], op)
        rows = rowsparse.check_rows(key, value.values, len(ids), info.shape[1], info.dtype, op)
        return rowsparse.coalesce(ids, rows)

    def _pull_rows(self, key, row_ids, out, push):
        """Pull rows ``row_ids`` (None: every row) into ``out``, after ``push`` if given."""
        info = self._keys[key]
        if row_ids is None:
            want, uniq, inverse = info.shape, None, None
        else:
            ids = rowsparse.check_ids(key, row_ids, info.shape[0], "pull")
            want = (len(ids), info.shape[1])
            uniq, inverse = rowsparse.unique_ids(ids)
        if not is_array(out) or arrays.shape_of(out) != want:
            raise SparseRowError(f"pull of sparse key {key!r}: out must be an array of shape {want}"
                                 f", got {getattr(out, 'shape', type(out).__name__)}")
        if dtype_name(key, out, "pull") != info.dtype:
            raise DTypeMismatchError(key, info.dtype, dtype_name(key, out, "pull"), "pull")
        direct = (inverse is None and type(out) is np.ndarray and out.flags.c_contiguous
                  and out.flags.writeable)
        land = out if direct else np.empty((info.shape[0] if uniq is None else len(uniq), info.shape[1]),
                                           info.dtype)
        self._rows_call(key, push, uniq, land)
        if inverse is not None and type(out) is np.ndarray and out.flags.c_contiguous and out.flags.writeable:
            np.take(land, inverse, axis=0, out=out)
        elif not direct:
            arrays.copy_into(out, land if inverse is None else rowsparse.gather(land, inverse))

    def _no_sparse_keys(self, op):
        """Checkpoints do not hold sparse tables yet: refuse rather than save part of a model."""
        if self._sparse_keys:
            keys = sorted(map(repr, self._sparse_keys))[:3]
            raise ConfigError(f"{op}: checkpoints do not cover sparse keys yet ({', '.join(keys)}); "
                              f"save a sparse table yourself with a dense kv.pull(key, out=table)")

    def _row_servers(self):
        """How many servers a sparse key's rows are spread over."""
        return 1

    @abc.abstractmethod
    def _init_sparse(self, key, table): ...

    @abc.abstractmethod
    def _push_sparse(self, key, ids, rows): ...

    @abc.abstractmethod
    def _rows_call(self, key, push, ids, land):
        """Push ``push`` ((ids, rows) or None), then pull rows ``ids`` (sorted unique; None:
        all) into ``land``."""

    # -- what a kind implements ---------------------------------------------------------
    @abc.abstractmethod
    def _init(self, keys, values): ...

    @abc.abstractmethod
    def _push(self, keys, values, priority): ...

    @abc.abstractmethod
    def _pull(self, keys, outs, priority): ...

    @abc.abstractmethod
    def _pushpull(self, keys, values, outs, priority): ...

    def _pushpull_start(self, keys, values, outs, priority):
        """A kind without requests in flight completes the call now."""
        self._pushpull(keys, values, outs, priority)
        return Pending(lambda: True, lambda timeout: None)

    @abc.abstractmethod
    def _set_optimizer(self, spec): ...

    @abc.abstractmethod
    def _barrier(self, timeout): ...

    @abc.abstractmethod
    def _join(self, timeout): ...

    @abc.abstractmethod
    def _close(self): ...

    @abc.abstractmethod
    def _save_checkpoint(self, url, worker_state, storage_options): ...

    @abc.abstractmethod
    def _load_checkpoint(self, url, storage_options): ...


class Pending:
    """A call in flight (``KVStore.pushpull_async``): ``done()`` says whether its replies are
    in (without waiting), ``wait(timeout=None)`` finishes it and raises its error, if any."""
    __slots__ = ("_done", "_wait", "_finished")

    def __init__(self, done, wait):
        self._done, self._wait, self._finished = done, wait, False

    def done(self):
        return self._finished or self._done()

    def wait(self, timeout=None):
        if not self._finished:
            self._wait(timeout)
            self._finished = True
