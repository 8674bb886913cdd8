"""Checkpoints: the on-storage format (``.npy`` files plus a JSON manifest written last), finding
the newest complete one, and exporting its weights. Saving and loading a job's state is done
by ``kv.save_checkpoint(url)`` / ``kv.load_checkpoint(url)``; the format is in docs/checkpoints.md.
"""
import posixpath

from ..errors import CheckpointError
from .files import Store
from .manifest import MANIFEST, Checkpoint
from .shards import size_of

__all__ = ["Checkpoint", "CheckpointError", "latest", "export_weights"]


def latest(directory, storage_options=None):
    """The URL of the newest complete checkpoint directly under ``directory``, or None.

    A checkpoint is complete once its ``manifest.json`` exists (it is written last, so a save
    that crashed leaves none and is skipped). Newest means the highest saved step, then the
    latest save time.

    Raises:
        CheckpointError: a complete-looking checkpoint's manifest cannot be read.
    """
    store = Store(directory, storage_options)
    try:
        found = store.fs.glob(posixpath.join(store.root, "*", MANIFEST))
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise CheckpointError(f"listing checkpoints under {store.url} failed: "
                              f"{type(exc).__name__}: {exc}", url=store.url) from None
    best, best_rank = None, None
    for path in found:
        name = posixpath.basename(posixpath.dirname(path))
        manifest = store.read_json(f"{name}/{MANIFEST}")
        rank = (manifest.get("step", 0), manifest.get("created", 0.0))
        if best_rank is None or rank > best_rank:
            best, best_rank = f"{store.url}/{name}", rank
    return best


def export_weights(url, storage_options=None):
    """Every key's value in the checkpoint at ``url``, as ``{key: numpy array}`` (full shape),
    for inference or to load into another framework (e.g. ``torch.from_numpy``).

    Raises:
        CheckpointError: the checkpoint is incomplete, or a file is missing or corrupt (the
            message names the file).
    """
    ckpt = Checkpoint(url, storage_options)
    ranges = [(key, 0, size_of(rec["shape"])) for key, rec in ckpt.keys.items()]
    ckpt.prefetch(ranges, with_state=False)
    out = {}
    for key, start, stop in ranges:
        rec = ckpt.keys[key]
        value, _ = ckpt.read_range(key, start, stop, with_state=False)
        out[rec["key"]] = value.reshape(rec["shape"]).copy()
    ckpt.release()
    return out
