"""``create(kind)`` and the registry of KVStore kinds."""
from .. import config as config_mod
from ..errors import ConfigError


def _local(kind, cfg):
    from .local import LocalKVStore
    return LocalKVStore()


def _dist(kind, cfg):
    if not cfg.launched:
        raise ConfigError(f"kind {kind!r} needs a running job: start the script with "
                          f"`psframe-launch -n N script.py` (or use kind='local' for one process)")
    from .dist import DistKVStore
    return DistKVStore(kind, cfg)


KINDS = {"local": _local, "dist_sync": _dist, "dist_async": _dist, "dist_device_sync": _dist}


def create(kind=None, config=None):
    """Create a KVStore.

    Args:
        kind: "local", "dist_sync", "dist_async" or "dist_device_sync". None: PSFRAME_KVSTORE
            if set, else "dist_sync" under psframe-launch, else "local".
        config: a ``psframe.config.Config`` (default: read from the environment).

    Raises:
        ConfigError: unknown kind, or a dist kind outside a launched job.
        PSTimeoutError / JobAbortedError: the job did not start.
    """
    cfg = config or config_mod.from_env()
    kind = kind or cfg.kvstore or ("dist_sync" if cfg.launched else "local")
    factory = KINDS.get(kind)
    if factory is None:
        raise ConfigError(f"unknown kvstore kind {kind!r}; use one of {', '.join(KINDS)}")
    return factory(kind, cfg)
