"""Listing a dataset URL/glob through fsspec and splitting its records between workers.

Listing (``open_source``) returns the shards sorted by path, with sizes from the listing and
record counts from the ``_psframe_manifest.json`` that ``write_partitions`` writes next to them
(a small JSON file; no shard is opened to learn its length). ``assign`` then gives every worker a
contiguous range of the same length of the global record order, so every worker has the same
number of batches even when shards are uneven or fewer than the workers; a worker touches only the
shards that overlap its range.
"""
import bisect
import dataclasses
import json
import logging
import posixpath
import re
import urllib.parse

import fsspec

from ..errors import ConfigError, DataError
from . import retry
from .readers import EXTENSIONS

log = logging.getLogger(__name__)

MANIFEST = "_psframe_manifest.json"
MANIFEST_FORMAT = "psframe-partitions"
MANIFEST_VERSION = 1
_MAGIC = re.compile(r"[*?\[]")


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One shard: path on its filesystem, full URL, size in bytes, records (None if unknown)."""
    path: str
    url: str
    size: int
    records: object = None


@dataclasses.dataclass(frozen=True)
class Source:
    """A listed dataset. ``arrays`` maps name -> (dtype str, tail shape) when manifests gave it."""
    fs: object
    url: str
    files: tuple
    arrays: object = None

    @property
    def counted(self):
        return all(f.records is not None for f in self.files)


@dataclasses.dataclass(frozen=True)
class Share:
    """One worker's part of an epoch: ``per_worker`` records in ``segments`` of
    ``(file_index, start, stop)``, in global order."""
    per_worker: int
    total: int
    segments: tuple


def _root(path):
    m = _MAGIC.search(path)
    return path if m is None else posixpath.dirname(path[:m.start()])


def _list(fs, url, path, policy):
    if _MAGIC.search(path):
        fs.invalidate_cache()
        try:
            found = retry.call(lambda: fs.glob(path, detail=True), url, "listing", policy)
        except DataError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise
            found = {}
    else:
        info = retry.call(lambda: fs.info(path), url, "listing", policy,
                          missing_hint="no such bucket, prefix or file: check the URL and "
                                       "endpoint_url")
        if info.get("type") == "directory":
            found = retry.call(lambda: fs.ls(path, detail=True, refresh=True), url, "listing",
                               policy)
            found = {d["name"]: d for d in found if d["name"].endswith(EXTENSIONS)}
        else:
            found = {info["name"]: info}
    found = {p: d for p, d in found.items()
             if d.get("type") != "directory" and posixpath.basename(p) != MANIFEST}
    if found:
        return found
    root = _root(path)
    where = _display(fs, root, url)
    try:   # not fs.exists(): it answers False for an unreachable store too
        retry.call(lambda: fs.info(root), url, "listing", policy)
    except DataError as exc:
        if not isinstance(exc.__cause__, FileNotFoundError):
            raise
        raise DataError(f"dataset {url}: {where} does not exist (no such bucket or prefix); check "
                        f"the URL, endpoint_url and the credentials' access", url=url) from None
    raise DataError(f"dataset {url} matched no shards under {where}; check the glob and the "
                    f"extension (supported: {', '.join(EXTENSIONS)})", url=url)


def _display(fs, path, url):
    """``path`` as a URL for messages, keeping the host of URLs like webhdfs://host:port/..."""
    shown = fs.unstrip_protocol(path)
    parts = urllib.parse.urlsplit(url)
    if parts.netloc and parts.netloc not in shown:
        shown = f"{parts.scheme}://{parts.netloc}/{path.lstrip('/')}"
    return shown


def _manifest(fs, directory, policy):
    murl = fs.unstrip_protocol(posixpath.join(directory, MANIFEST))
    try:
        raw = retry.call(lambda: fs.cat_file(posixpath.join(directory, MANIFEST)), murl,
                         "reading", policy)
    except DataError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
    try:
        doc = json.loads(raw)
        if doc.get("format") != MANIFEST_FORMAT or doc.get("version") != MANIFEST_VERSION:
            raise ValueError(f"format/version {doc.get('format')}/{doc.get('version')}")
        arrays = {k: (v["dtype"], tuple(v["shape"])) for k, v in doc["arrays"].items()}
        files = {k: (int(v["records"]), int(v["size"])) for k, v in doc["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"manifest {murl} is unreadable ({exc}); rewrite the dataset with "
                        f"psframe.data.write_partitions or delete the manifest", url=murl) from None
    return murl, arrays, files


def open_source(url, storage_options=None, policy=retry.RetryPolicy()):
    """List the shards of ``url`` (a file, a directory, or a glob) and their record counts.

    Args:
        url: any fsspec URL (``s3://``, ``hdfs://``, ``webhdfs://``, ``memory://``, a local path).
        storage_options: fsspec options (``endpoint_url``, ``key``/``secret``, ...). Never logged.
        policy: retries of transient errors.

    Raises:
        DataError: missing bucket/prefix, empty glob, unsupported format, stale manifest.
    """
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise DataError(f"dataset {url}: cannot open its filesystem ({exc}); check the URL scheme "
                        f"and install its fsspec backend (e.g. pip install s3fs)", url=url) from None
    found = _list(fs, url, path, policy)
    bad = sorted(p for p in found if not p.endswith(EXTENSIONS))
    if bad:
        raise DataError(f"dataset {url}: {fs.unstrip_protocol(bad[0])} is not a supported shard "
                        f"({', '.join(EXTENSIONS)}); narrow the glob", url=url)
    by_dir = {}
    for p in sorted(found):
        by_dir.setdefault(posixpath.dirname(p), []).append(p)
    files, arrays = [], None
    for directory, paths in by_dir.items():
        manifest = _manifest(fs, directory, policy)
        for p in paths:
            size, records = int(found[p].get("size") or 0), None
            if manifest is not None:
                murl, marrays, mfiles = manifest
                entry = mfiles.get(posixpath.basename(p))
                if entry is None or entry[1] != size:
                    raise DataError(
                        f"manifest {murl} is stale: {fs.unstrip_protocol(p)} is "
                        f"{'not listed in it' if entry is None else f'{size} bytes, not {entry[1]}'}"
                        f"; rewrite the dataset with write_partitions, or delete the manifest to "
                        f"count records from the shard headers", url=murl)
                if arrays is not None and marrays != arrays:
                    raise DataError(f"manifest {murl} declares arrays {marrays}, other "
                                    f"directories {arrays}; every shard needs the same arrays",
                                    url=murl)
                arrays, records = marrays, entry[0]
            files.append(FileEntry(p, fs.unstrip_protocol(p), size, records))
    return Source(fs, url, tuple(files), arrays)


def assign(counts, rank, num_workers, drop_last=False):
    """Give worker ``rank`` its contiguous, equal-length share of the global record order.

    Every worker gets ``ceil(total / num_workers)`` records (the last shares wrap around to the
    start, repeating a few records, as torch's DistributedSampler pads), or with ``drop_last``
    ``total // num_workers`` (the tail of the global order is dropped).

    Args:
        counts: records per file, in file order.
        rank, num_workers: this worker and the number of workers.
        drop_last: drop instead of repeat to even the shares out.

    Returns:
        A ``Share``.

    Raises:
        ConfigError: bad rank, or fewer records than workers with ``drop_last``.
    """
    if not 0 <= rank < num_workers:
        raise ConfigError(f"rank {rank} is out of range for num_workers={num_workers}")
    total = int(sum(counts))
    if total == 0:
        raise ConfigError("the dataset has no records; every shard is empty")
    per = total // num_workers if drop_last else -(-total // num_workers)
    if per == 0:
        raise ConfigError(f"the dataset has {total} records, fewer than num_workers={num_workers},"
                          f" so with drop_last=True no worker gets any; use drop_last=False")
    starts = [0]
    for c in counts[:-1]:
        starts.append(starts[-1] + int(c))
    segments, pos, hi = [], rank * per, rank * per + per
    while pos < hi:
        g = pos % total
        fi = bisect.bisect_right(starts, g) - 1
        first = g - starts[fi]
        take = min(int(counts[fi]) - first, hi - pos)
        segments.append((fi, first, first + take))
        pos += take
    return Share(per, total, tuple(segments))


def split_blocks(segments, block_records):
    """Cut segments into read blocks of at most ``block_records`` records each."""
    if block_records < 1:
        raise ConfigError(f"block_records={block_records} must be >= 1")
    return [(fi, s, min(s + block_records, stop))
            for fi, start, stop in segments for s in range(start, stop, block_records)]
