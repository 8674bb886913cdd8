"""The psframe error family: every error a user can hit, each naming its cause and its fix.

Errors subclass ``PSError`` and also the natural built-in (``ValueError``, ``TimeoutError``,
``ConnectionError``) so generic handlers still catch them. They cross the wire as a whitelisted
*name* plus a message (``to_wire`` / ``from_wire``), never as a pickle.
"""
import logging


class PSError(Exception):
    """Base class of every psframe error."""


class ConfigError(PSError, ValueError):
    """A missing or malformed setting (environment variable, argument, launcher flag)."""


class RefusedError(PSError, PermissionError):
    """A message its sender may not send: its claimed sender is not the identity its connection
    authenticated as, or that identity's role may not send the command."""


class MemoryBudgetError(PSError, MemoryError):
    """An init would take a server past its memory budget (``PSFRAME_SERVER_MEMORY_BYTES``)."""


class ProtocolError(PSError, ValueError):
    """A message that breaks the wire rules (version, command, frame count, sizes)."""


class KeyStateError(PSError, KeyError):
    """Base of errors about a key's state. ``KeyError`` quotes its message; we do not."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class UninitializedKeyError(KeyStateError):
    """push/pull of a key that no ``init`` created."""

    def __init__(self, key, op="push/pull"):
        self.key = key
        super().__init__(
            f"key {key!r} is not initialised: {op} needs kv.init({key!r}, value) first "
            f"(called on every worker; rank 0's value wins)")


class DoubleInitError(KeyStateError):
    """``init`` of a key this worker already initialised."""

    def __init__(self, key, rank=None):
        self.key = key
        who = f"worker {rank}" if rank is not None else "this worker"
        super().__init__(
            f"key {key!r} is already initialised by {who}: call kv.init once per key, "
            f"then use push/pull to change its value")


class ShapeMismatchError(PSError, ValueError):
    """A pushed/pulled array whose shape differs from the key's stored shape."""

    def __init__(self, key, expected, actual, op="push"):
        self.key, self.expected, self.actual = key, tuple(expected), tuple(actual)
        super().__init__(
            f"{op} of key {key!r}: shape {self.actual} does not match the key's initialised "
            f"shape {self.expected}; pass an array of shape {self.expected}")


class DTypeMismatchError(PSError, TypeError):
    """A pushed/pulled array whose dtype differs from the key's stored dtype."""

    def __init__(self, key, expected, actual, op="push"):
        self.key, self.expected, self.actual = key, str(expected), str(actual)
        super().__init__(
            f"{op} of key {key!r}: dtype {self.actual} does not match the key's initialised "
            f"dtype {self.expected}; convert with .astype({self.expected!r})")


class UnsupportedDTypeError(PSError, TypeError):
    """An array dtype psframe does not carry."""

    def __init__(self, dtype, supported, key=None, op=None):
        self.dtype, self.key = str(dtype), key
        where = f"{op or 'value'} of key {key!r}: " if key is not None else ""
        super().__init__(f"{where}dtype {self.dtype} is not supported; use one of "
                         f"{', '.join(supported)} (e.g. .astype('float32'))")


class SparseRowError(PSError, ValueError):
    """Row ids or rows of a sparse key that do not fit it (dtype, shape, an id out of range),
    or a dense value where a sparse key needs a ``RowSparse`` (and the reverse)."""


class OptimizerError(PSError, ValueError):
    """An optimizer that cannot be shipped or built (unregistered name, bad config), or an
    update that raised."""

    @classmethod
    def wrapping(cls, exc, what, consequence):
        """``exc``, raised by an optimizer's code, as the OptimizerError a job reports:
        ``"<what> <ExcType>: <exc>; <consequence>"`` (``what`` names the update, ending in
        "raised" or a colon). An OptimizerError is returned as it is."""
        if isinstance(exc, OptimizerError):
            return exc
        err = cls(f"{what} {type(exc).__name__}: {exc}; {consequence}")
        err.__cause__, err.__suppress_context__ = exc, True    # as ``raise err from exc``
        return err


class PSTimeoutError(PSError, TimeoutError):
    """A blocking call that did not complete within its timeout."""


class PeerLostError(PSError, ConnectionError):
    """Another process of the job died or stopped answering; the job cannot go on."""


class JobAbortedError(PeerLostError):
    """The scheduler stopped the job (a peer failed, or start-up did not complete)."""


class UnevenStepsError(PSError, RuntimeError):
    """A sync step cannot complete: a worker it needs has finished (closed its KVStore) after
    fewer pushes of the key."""

    @classmethod
    def worker_finished(cls, step, key, rank, pushes, what="key"):
        """Step ``step`` of ``what`` ``key`` needs worker ``rank``, which closed after
        ``pushes`` pushes of it (the one wording of servers and host aggregators)."""
        return cls(f"step {step} of {what} {key!r} cannot complete: worker {rank} finished "
                   f"(closed its KVStore) after pushing it {pushes} times; every worker must "
                   f"push every key equally often, or call kv.join() when it runs out of data")


class RemoteError(PSError):
    """An error reply whose name is not in the whitelist (message kept verbatim)."""


class DataError(PSError, OSError):
    """A dataset that cannot be listed or read (missing bucket/prefix, empty glob, corrupt or
    vanished shard, retries exhausted). The message names the URL and the fix; ``url`` holds it."""

    def __init__(self, message, url=None):
        self.url = url
        super().__init__(message)


class CheckpointError(PSError, OSError):
    """A checkpoint that cannot be written or read (missing, incomplete, corrupt or truncated
    file, or one that does not match the job loading it). The message names the file and the
    fix; ``url`` holds the file's URL."""

    def __init__(self, message, url=None):
        self.url = url
        super().__init__(message)


# Only these names are turned back into exceptions on receipt; anything else becomes RemoteError.
_WIRE_ERRORS = {cls.__name__: cls for cls in (
    PSError, ConfigError, ProtocolError, UninitializedKeyError, DoubleInitError,
    ShapeMismatchError, DTypeMismatchError, UnsupportedDTypeError, OptimizerError,
    SparseRowError, PSTimeoutError, PeerLostError, JobAbortedError, UnevenStepsError, RefusedError,
    MemoryBudgetError, DataError, CheckpointError)}


# Facts an error keeps as attributes; they travel beside the message (all msgpack-able).
_WIRE_ATTRS = ("key", "expected", "actual", "url")


def as_reply(exc, who):
    """``exc``, raised while ``who`` (a service) handled a peer's message, as the error that peer
    is told: a PSError as it is; anything else is a bug on this side, logged with its traceback
    and reported as a ProtocolError naming it. The service goes on serving either way."""
    if isinstance(exc, PSError):
        return exc
    logging.getLogger(__name__).error("unexpected error handling a message", exc_info=exc)
    return ProtocolError(f"the {who} could not handle this message: {type(exc).__name__}: {exc}")


def to_wire(exc):
    """``(name, message, attrs)`` describing ``exc`` for an error reply."""
    name = type(exc).__name__ if type(exc).__name__ in _WIRE_ERRORS else "PSError"
    attrs = {a: getattr(exc, a) for a in _WIRE_ATTRS if isinstance(getattr(exc, a, None), (int, str, tuple))}
    return name, str(exc), attrs


def from_wire(name, message, attrs=None):
    """Rebuild the exception named in an error reply (whitelisted names only), with its
    attributes, without calling its ``__init__``."""
    cls = _WIRE_ERRORS.get(name, RemoteError)
    try:
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
    except TypeError:      # a built-in base with its own __new__ (MemoryError): no facts to skip
        exc = cls(message)
    for a, v in (attrs or {}).items():
        if a in _WIRE_ATTRS:
            setattr(exc, a, tuple(v) if isinstance(v, list) else v)
    return exc


def from_body(body):
    """The exception carried by an error reply's body."""
    return from_wire(body.get("name", ""), body.get("message", ""), body.get("attrs"))



def stopped_by_peer_line(exc):
    """The one line a process prints when ``exc`` (a ``PeerLostError``) stopped it. It failed
    because another process did, so its own traceback would only bury the report of the real
    cause (the failed process's own output and psframe-launch's ROOT CAUSE block)."""
    return (f"psframe: stopped because another process of the job failed: {type(exc).__name__}: "
            f"{exc}\n")
