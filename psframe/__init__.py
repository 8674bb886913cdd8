"""psframe: a parameter-server training framework over ZeroMQ.

Public surface only: ``create``, ``KVStore``, the ``PSError`` family, ``optim``, ``data`` and
``checkpoint``
(imported lazily so ``import psframe`` pulls in neither zmq, fsspec nor cupy).
"""
from .errors import (PSError, ConfigError, ProtocolError, UninitializedKeyError, DoubleInitError,
                     ShapeMismatchError, DTypeMismatchError, UnsupportedDTypeError, OptimizerError,
                     PSTimeoutError, PeerLostError, JobAbortedError, RemoteError, DataError,
                     CheckpointError)

__version__ = "0.1.0"
__all__ = ["create", "KVStore", "optim", "data", "PSError", "ConfigError", "ProtocolError",
           "UninitializedKeyError", "DoubleInitError", "ShapeMismatchError", "DTypeMismatchError",
           "UnsupportedDTypeError", "OptimizerError", "PSTimeoutError", "PeerLostError",
           "JobAbortedError", "RemoteError", "DataError", "CheckpointError", "checkpoint"]


def create(kind=None, **kwargs):
    """Create the KVStore of ``kind`` (see ``psframe.kvstore.create``)."""
    from .kvstore import create as _create
    return _create(kind, **kwargs)


def __getattr__(name):
    import importlib
    if name in ("optim", "data", "kvstore", "torch", "checkpoint"):
        return importlib.import_module(f".{name}", __name__)
    if name == "KVStore":
        from .kvstore.base import KVStore
        return KVStore
    raise AttributeError(f"module 'psframe' has no attribute {name!r}")
