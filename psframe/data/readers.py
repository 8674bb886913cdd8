"""Reading ``.npy`` / ``.npz`` shards through fsspec, never with pickle.

A shard is a set of named arrays sharing their first dimension (the records). ``read_layout``
reads only the headers (one small ranged read for ``.npy``; the zip directory and local headers
for ``.npz``) and returns a ``ShardLayout`` with each array's byte offset. ``read_rows`` then
fetches a record range of many shards at once as byte ranges (concurrent on async stores such as
S3), so a worker downloads exactly the records it owns. Arrays that cannot be read by range
(compressed ``.npz`` members, Fortran order) are downloaded whole and sliced.
"""
import dataclasses
import io
import struct
import zipfile
import zlib

import numpy as np

from ..errors import DataError
from . import retry

EXTENSIONS = (".npz", ".npy")
NPY_KEY = "data"          # batch key of a bare .npy shard written without a manifest
_PREFIX = 4096            # bytes fetched to parse a header in one request
_MAX_HEADER = 1 << 20
_SMALL_NPZ = 1 << 20      # .npz shards up to this size are fetched whole to read their headers


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One array in a shard: dtype, per-record shape, and where its data starts (None when it
    cannot be read by byte range)."""
    dtype: str
    tail: tuple
    offset: object = None

    @property
    def row_bytes(self):
        return np.dtype(self.dtype).itemsize * int(np.prod(self.tail, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class ShardLayout:
    """What ``read_layout`` learnt from a shard's headers."""
    url: str
    path: str
    num_records: int
    arrays: dict          # name -> ArraySpec
    npz: bool

    @property
    def rangeable(self):
        return all(spec.offset is not None for spec in self.arrays.values())


def _corrupt(url, why):
    return DataError(f"shard {url} is corrupt or not a NumPy file ({why}); rewrite it (e.g. with "
                     f"psframe.data.write_partitions) or remove it from the glob", url=url)


def parse_npy_header(buf, url):
    """Parse the ``.npy`` header at the start of ``buf``.

    Returns:
        ``(dtype, shape, fortran_order, data_offset)``, or ``None`` when ``buf`` is too short;
        then ``needed`` bytes are required: the second item of ``("short", needed)``.

    Raises:
        DataError: bad magic, unsupported version, or an object dtype (which needs pickle).
    """
    if len(buf) < 12:
        return "short", 12
    if buf[:6] != b"\x93NUMPY":
        raise _corrupt(url, "bad .npy magic")
    major = buf[6]
    if major == 1:
        hlen, start = struct.unpack("<H", buf[8:10])[0], 10
    elif major in (2, 3):
        hlen, start = struct.unpack("<I", buf[8:12])[0], 12
    else:
        raise _corrupt(url, f"unsupported .npy version {major}")
    if hlen > _MAX_HEADER:
        raise _corrupt(url, f"header of {hlen} bytes")
    if len(buf) < start + hlen:
        return "short", start + hlen
    f = io.BytesIO(bytes(buf[:start + hlen]))
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy version {version} (utf-8 field names) is not supported")
    except ValueError as exc:
        raise _corrupt(url, str(exc)) from None
    if dtype.hasobject:
        raise DataError(f"shard {url} holds an object array, which needs pickle; psframe loads "
                        f"with allow_pickle=False: save numeric arrays instead", url=url)
    if len(shape) == 0:
        raise _corrupt(url, "a 0-d array has no records")
    return dtype, tuple(shape), bool(fortran), start + hlen


def _npy_at(read, url, base, avail):
    """Header of an .npy stored at byte ``base`` with ``avail`` bytes; ``read(start, end)``."""
    buf = read(base, base + min(_PREFIX, avail))
    parsed = parse_npy_header(buf, url)
    if parsed[0] == "short":
        if parsed[1] > avail:
            raise _corrupt(url, "truncated header")
        buf = read(base, base + parsed[1])
        parsed = parse_npy_header(buf, url)
        if parsed[0] == "short":
            raise _corrupt(url, "truncated header")
    dtype, shape, fortran, hdr = parsed
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if hdr + nbytes != avail:
        raise _corrupt(url, f"header declares {nbytes} data bytes but {avail - hdr} are present")
    rangeable = not (fortran and len(shape) > 1)
    spec = ArraySpec(dtype.str, shape[1:], base + hdr if rangeable else None)
    return spec, shape[0]


def read_layout(fs, path, url, size, policy, npy_key=NPY_KEY):
    """Read a shard's headers and return its ``ShardLayout``.

    Args:
        fs: the fsspec filesystem; ``path`` its path of the shard, ``url`` the full URL.
        size: the object's size in bytes (from the listing).
        policy: a ``retry.RetryPolicy`` for the reads.
        npy_key: the batch key of a ``.npy`` shard's single array.

    Raises:
        DataError: missing, unreadable or corrupt shard, or arrays of different lengths.
    """
    gone = "it was listed when the dataset was opened and has since disappeared"

    def read(start, end):
        return retry.call(lambda: fs.cat_file(path, start=start, end=end), url,
                          "reading header of", policy, missing_hint=gone)

    if path.endswith(".npy"):
        spec, n = _npy_at(read, url, 0, size)
        return ShardLayout(url, path, n, {npy_key: spec}, npz=False)
    if not path.endswith(".npz"):
        raise DataError(f"{url}: unsupported shard format; use one of {', '.join(EXTENSIONS)}",
                        url=url)
    return retry.call(lambda: _npz_layout(fs, path, url, size, read), url, "reading header of",
                      policy, missing_hint=gone)


def _npz_layout(fs, path, url, size, read):
    """Small shards are fetched whole (one request); larger ones are opened lazily after reading
    the tail through ``read``, so a missing object or a transient error is reported as such
    (zipfile would turn it into "not a zip file")."""
    if size <= _SMALL_NPZ:
        data = read(0, size)
        f, read = io.BytesIO(data), (lambda start, end: data[start:end])
    else:
        read(max(0, size - _PREFIX), size)
        f = fs.open(path, "rb", block_size=1 << 16)
    arrays, counts = {}, set()
    try:
        with f, zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                if info.compress_type == zipfile.ZIP_STORED:
                    f.seek(info.header_offset)
                    local = f.read(30)
                    if len(local) != 30 or local[:4] != b"PK\x03\x04":
                        raise _corrupt(url, f"bad zip local header for {info.filename}")
                    n, m = struct.unpack("<HH", local[26:30])
                    base = info.header_offset + 30 + n + m
                    spec, count = _npy_at(read, url, base, info.file_size)
                else:
                    with zf.open(info) as member:
                        parsed = parse_npy_header(member.read(_PREFIX), url)
                    if parsed[0] == "short":
                        raise _corrupt(url, f"truncated member {info.filename}")
                    dtype, shape, _, _ = parsed
                    spec, count = ArraySpec(dtype.str, shape[1:], None), shape[0]
                arrays[name] = spec
                counts.add(count)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error) as exc:
        if not fs.exists(path):
            raise FileNotFoundError(path) from None
        raise _corrupt(url, f"bad zip: {exc}") from None
    if not arrays:
        raise _corrupt(url, "no .npy members in the .npz")
    if len(counts) != 1:
        raise DataError(f"shard {url}: arrays {sorted(arrays)} have different lengths "
                        f"{sorted(counts)}; every array of a shard needs one row per record",
                        url=url)
    return ShardLayout(url, path, counts.pop(), arrays, npz=True)


def _load_whole(fs, layout, policy):
    """Download a shard that cannot be read by byte range and return ``{name: array}``.

    Compressed ``.npz`` members are inflated with a bound: a member that inflates to more than
    its ``.npy`` header declares is rejected before the excess is produced (a zip bomb costs
    one header's worth of work, not gigabytes)."""
    data = retry.call(lambda: fs.cat_file(layout.path), layout.url, "reading", policy)
    try:
        if not layout.npz:
            return {next(iter(layout.arrays)): np.load(io.BytesIO(data), allow_pickle=False)}
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return {name: _inflate_member(zf, name, layout.url) for name in layout.arrays}
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise _corrupt(layout.url, str(exc)) from None


def _inflate_member(zf, name, url):
    """One ``.npz`` member as an array, reading at most the bytes its header declares."""
    info = zf.getinfo(name + ".npy")
    with zf.open(info) as member:
        head = member.read(_PREFIX)
        parsed = parse_npy_header(head, url)
        if parsed[0] == "short":
            head += member.read(parsed[1] - len(head))
            parsed = parse_npy_header(head, url)
            if parsed[0] == "short":
                raise _corrupt(url, f"truncated member {info.filename}")
        dtype, shape, fortran, hdr = parsed
        declared = hdr + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if info.file_size > declared:
            raise _bomb(url, info.filename, info.file_size, declared)
        body = bytearray(head[hdr:declared])
        while len(body) < declared - hdr:
            chunk = member.read(min(1 << 24, declared - hdr - len(body)))
            if not chunk:
                raise _corrupt(url, f"member {info.filename} is shorter than its header declares")
            body += chunk
        if member.read(1):
            raise _bomb(url, info.filename, "more than", declared)
    array = np.frombuffer(body, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C")


def _bomb(url, member, size, declared):
    return DataError(f"shard {url}: member {member} inflates to {size} bytes but its header "
                     f"declares {declared}; the shard is corrupt or hostile (a zip bomb) and was "
                     f"rejected: rewrite it with psframe.data.write_partitions", url=url)


def read_rows(fs, requests, policy, whole=None):
    """Read record ranges of shards.

    Args:
        fs: the fsspec filesystem.
        requests: a list of ``(layout, start, stop)``.
        policy: a ``retry.RetryPolicy``.
        whole: a dict (path -> ``{name: array}``) of shards already downloaded whole; shards
            that must be read whole are added to it, so a caller that keeps it across calls
            downloads and inflates each such shard once.

    Returns:
        A list (one per request) of ``{name: array}`` with ``stop - start`` rows each.

    Raises:
        DataError: a shard vanished, shrank, or could not be read after retries.
    """
    paths, starts, ends, slots = [], [], [], []
    out = [dict() for _ in requests]
    whole = {} if whole is None else whole
    for i, (layout, start, stop) in enumerate(requests):
        for name, spec in layout.arrays.items():
            if spec.offset is None:
                if layout.path not in whole:
                    whole[layout.path] = _load_whole(fs, layout, policy)
                out[i][name] = whole[layout.path][name][start:stop]
                continue
            paths.append(layout.path)
            starts.append(spec.offset + start * spec.row_bytes)
            ends.append(spec.offset + stop * spec.row_bytes)
            slots.append((i, name, spec, stop - start, layout.url))
    if not paths:
        return out
    try:
        blobs = fs.cat_ranges(paths, starts, ends, on_error="return")
    except Exception as exc:  # noqa: BLE001 - retried one by one below
        blobs = [exc] * len(paths)
    gone = "it was listed when the dataset was opened and has disappeared mid-epoch; do not " \
           "modify a dataset while a job reads it (write a new prefix instead)"
    for k, (i, name, spec, rows, url) in enumerate(slots):
        blob = blobs[k]
        if isinstance(blob, BaseException):
            if not retry.is_transient(blob):
                raise retry.translate(blob, url, "reading", gone) from blob
            p, s, e = paths[k], starts[k], ends[k]
            blob = retry.call(lambda: fs.cat_file(p, start=s, end=e), url, "reading", policy, gone)
        if len(blob) != rows * spec.row_bytes:
            raise DataError(f"shard {url}: got {len(blob)} bytes for {rows} records of {name!r}, "
                            f"expected {rows * spec.row_bytes}; the object changed or was "
                            f"truncated while the job read it", url=url)
        out[i][name] = np.frombuffer(blob, dtype=spec.dtype).reshape((rows,) + spec.tail)
    return out
