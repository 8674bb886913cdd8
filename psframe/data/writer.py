"""``write_partitions``: cut named arrays into ``.npz``/``.npy`` shards plus a JSON manifest."""
import io
import json
import logging
import posixpath

import fsspec
import numpy as np

from ..errors import ConfigError
from . import partition, retry

log = logging.getLogger(__name__)


def _validate(arrays, fmt):
    if not isinstance(arrays, dict) or not arrays:
        raise ConfigError("write_partitions needs a non-empty dict {name: array}")
    arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
    lengths = {k: (len(v) if v.ndim else None) for k, v in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise ConfigError(f"write_partitions needs arrays with one shared first dimension (the "
                          f"records); got lengths {lengths}")
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise ConfigError(f"array {k!r} has dtype object, which would need pickle; convert it "
                              f"to a numeric dtype")
    if fmt not in ("npz", "npy"):
        raise ConfigError(f"format={fmt!r}: use 'npz' (any number of arrays) or 'npy' (one)")
    if fmt == "npy" and len(arrays) != 1:
        raise ConfigError(f"format='npy' holds one array per shard; got {sorted(arrays)}: use "
                          f"format='npz'")
    return arrays, next(iter(lengths.values()))


def write_partitions(arrays, url, num_shards=None, *, shard_sizes=None, format="npz",
                     storage_options=None, retries=4):
    """Write ``arrays`` as shards ``part-00000.<format>`` ... under ``url`` plus a manifest.

    The records (first dimension) are split into ``num_shards`` contiguous shards of nearly equal
    size, or of ``shard_sizes`` records each. ``.npz`` shards are stored uncompressed so readers
    can fetch record ranges by byte offset. ``_psframe_manifest.json`` records each shard's record
    count and size, so workers never open other workers' shards to count records. Existing
    shards of the same names are overwritten; write a fresh prefix per dataset version.

    Args:
        arrays: ``{name: array}``, all with the same first dimension.
        url: a directory URL (``s3://bucket/train``, ``memory://d``, a local path).
        num_shards: number of shards (ignored when ``shard_sizes`` is given).
        shard_sizes: records per shard, summing to the number of records.
        format: ``"npz"`` (any number of arrays) or ``"npy"`` (exactly one array).
        storage_options: fsspec options for the URL (never logged).
        retries: tries per write for transient errors.

    Returns:
        The URLs of the shards written, in order.

    Raises:
        ConfigError: bad arrays, sizes or format. DataError: the store refused a write.
    """
    arrays, total = _validate(arrays, format)
    if shard_sizes is None:
        if num_shards is None or int(num_shards) < 1:
            raise ConfigError(f"num_shards={num_shards} must be >= 1 (or pass shard_sizes)")
        bounds = np.linspace(0, total, int(num_shards) + 1).round().astype(np.int64)
        shard_sizes = np.diff(bounds).tolist()
    shard_sizes = [int(s) for s in shard_sizes]
    if any(s < 0 for s in shard_sizes) or sum(shard_sizes) != total:
        raise ConfigError(f"shard_sizes {shard_sizes} must be >= 0 and sum to {total} records")
    policy = retry.RetryPolicy(attempts=int(retries))
    fs, root = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    retry.call(lambda: fs.makedirs(root, exist_ok=True), str(url), "creating", policy)
    files, urls, start = {}, [], 0
    for i, size in enumerate(shard_sizes):
        part = {k: np.ascontiguousarray(v[start:start + size]) for k, v in arrays.items()}
        start += size
        buf = io.BytesIO()
        if format == "npz":
            np.savez(buf, **part)
        else:
            np.save(buf, next(iter(part.values())), allow_pickle=False)
        name = f"part-{i:05d}.{format}"
        path = posixpath.join(root, name)
        data = buf.getvalue()
        retry.call(lambda: fs.pipe_file(path, data), fs.unstrip_protocol(path), "writing", policy)
        files[name] = {"records": size, "size": len(data)}
        urls.append(fs.unstrip_protocol(path))
    manifest = {"format": partition.MANIFEST_FORMAT, "version": partition.MANIFEST_VERSION,
                "arrays": {k: {"dtype": v.dtype.str, "shape": list(v.shape[1:])}
                           for k, v in arrays.items()},
                "files": files}
    mpath = posixpath.join(root, partition.MANIFEST)
    blob = json.dumps(manifest, indent=1, sort_keys=True).encode()
    retry.call(lambda: fs.pipe_file(mpath, blob), fs.unstrip_protocol(mpath), "writing", policy)
    log.info("wrote %d records as %d %s shards to %s", total, len(shard_sizes), format, url)
    return urls
