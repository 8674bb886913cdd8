"""The ``KVStore`` interface every kind implements, and the argument checks they share.

Kinds implement ``server_stats`` and ``_init``, ``_push``, ``_pull``, ``_pushpull``, ``_set_optimizer``,
``_barrier``, ``_close`` on normalised arguments: lists of keys, one host or device array per
key for values (device lists already summed), one list of output arrays per key for outs.
"""
import abc
import dataclasses

from .. import arrays
from ..aggregation.reduce import sum_arrays
from ..errors import (ConfigError, DoubleInitError, DTypeMismatchError, ShapeMismatchError,
                      UninitializedKeyError)


@dataclasses.dataclass
class KeyInfo:
    """What a worker knows of a key it initialised."""
    shape: tuple
    dtype: str
    parts: tuple = ()       # sharding.Part tuple (dist kinds)
    pushes: int = 0         # pushes sent (the step of the next push is pushes + 1)
    acked: int = 0          # pushes whose step the servers completed
    group: object = None    # the fusion.Group it travels in (dist kinds), if any
    member: int = 0         # its index in that group
    part_acked: list = None  # pushes merged, per part (dist kinds, keys cut into parts)

    @property
    def size(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


def _is_key(k):
    return isinstance(k, (int, str)) and not isinstance(k, bool)


def _check_key(k):
    if not _is_key(k):
        raise ConfigError(f"key {k!r} must be an int or a str (or a list of them)")
    if type(k) is str and k.startswith("\x00"):
        raise ConfigError(f"key {k!r}: keys starting with '\\x00' are reserved for psframe's "
                          f"fused keys; rename it")
    return k


def normalise(key, value, what):
    """``(keys, per_key_values)``: single key -> one entry; list key -> a list of equal length.
    Each value entry is a list of arrays (one per local device)."""
    if isinstance(key, (list, tuple)):
        keys = [_check_key(k) for k in key]
        if not isinstance(value, (list, tuple)) or len(value) != len(keys):
            raise ConfigError(f"{what}: {len(keys)} keys need a list of {len(keys)} values")
        vals = list(value)
    else:
        keys, vals = [_check_key(key)], [value]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{what}: a key appears twice in {keys}")
    return keys, [list(v) if isinstance(v, (list, tuple)) else [v] for v in vals]


class KVStore(abc.ABC):
    """A key-value store of arrays shared by the workers of a job (see README "API")."""

    type = "base"

    def __init__(self, rank=0, num_workers=1, local_rank=0, local_size=1):
        self.rank, self.num_workers = rank, num_workers
        self.local_rank, self.local_size = local_rank, local_size
        self._keys = {}
        self._closed = False
        self._closed_by = None       # why the store closed itself (said by later calls)

    # -- public API ---------------------------------------------------------------------
    def init(self, key, value):
        """Create keys with initial values; rank 0's value wins. Every worker returns only
        once the key is initialised.

        Raises:
            DoubleInitError: the key was initialised before by this worker.
        """
        keys, vals = normalise(key, value, "init")
        hosts = []
        for k, v in zip(keys, vals):
            if k in self._keys:
                raise DoubleInitError(k, self.rank)
            a = arrays.to_host(v[0])
            hosts.append(a)
        self._check_open()
        for k, a in zip(keys, hosts):
            self._keys[k] = KeyInfo(arrays.shape_of(a), arrays.dtype_name(a))
        try:
            self._init(keys, hosts)
        except Exception:
            for k in keys:
                self._keys.pop(k, None)
            raise

    def push(self, key, value, priority=0):
        """Push values (an array, or a list of arrays per key, summed here first). Returns once
        the buffers are handed off; the servers merge asynchronously."""
        keys, vals = self._checked(key, value, "push")
        self._push(keys, [sum_arrays(v) for v in vals], priority)

    def pull(self, key, out, priority=0):
        """Fill ``out`` (an array or a list of arrays per key) with the newest value that
        includes this worker's own last push."""
        keys, outs = self._checked(key, out, "pull")
        self._pull(keys, outs, priority)

    def pushpull(self, key, value, out=None, priority=0):
        """push then pull in one round trip; ``out=None`` writes the result into ``value``."""
        keys, vals = self._checked(key, value, "pushpull")
        outs = vals if out is None else self._checked(key, out, "pushpull")[1]
        self._pushpull(keys, [sum_arrays(v) for v in vals], outs, priority)

    def set_optimizer(self, optimizer):
        """Have the servers apply ``optimizer`` to every update from now on (weights kept)."""
        from .. import optim
        self._check_open()
        self._set_optimizer(optim.to_spec(optimizer))

    def barrier(self, timeout=None):
        """Return once every worker of the job called ``barrier``."""
        self._check_open()
        self._barrier(timeout)

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
        keys, vals = normalise(key, value, op)
        for k, v in zip(keys, vals):
            info = self._keys.get(k)
            if info is None:
                raise UninitializedKeyError(k, op)
            for a in v:
                shape, dtype = arrays.shape_of(a), arrays.dtype_name(a)
                if shape != info.shape:
                    raise ShapeMismatchError(k, info.shape, shape, op)
                if dtype != info.dtype:
                    raise DTypeMismatchError(k, info.dtype, dtype, op)
        return keys, vals

    # -- what a kind implements ---------------------------------------------------------
    @abc.abstractmethod
    def _init(self, keys, values): ...

    @abc.abstractmethod
    def _push(self, keys, values, priority): ...

    @abc.abstractmethod
    def _pull(self, keys, outs, priority): ...

    @abc.abstractmethod
    def _pushpull(self, keys, values, outs, priority): ...

    @abc.abstractmethod
    def _set_optimizer(self, spec): ...

    @abc.abstractmethod
    def _barrier(self, timeout): ...

    @abc.abstractmethod
    def _close(self): ...
