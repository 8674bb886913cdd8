"""One checkpoint file at a time, through fsspec: ``.npy`` arrays with a CRC-32 of their data,
and JSON documents. Every failure is a ``CheckpointError`` naming the file's URL.

An array file is a standard ``.npy`` (format 1.0, C order, never an object dtype), so
``numpy.load(path, allow_pickle=False)`` reads it; the record the writer returns (path,
dtype, shape, byte count, CRC-32 of the data bytes) lets a reader prove it whole.
"""
import io
import json
import posixpath
import threading
import zlib

import numpy as np

from ..errors import CheckpointError

# Data is checksummed and written in pieces of this size, straight from the array's memory (no
# copy of a big array, and each piece is still in the CPU cache when it is written).
PIECE_BYTES = 8 << 20
REMOTE_THREADS = 4       # files of one process in flight at once on a remote store


class Store:
    """A checkpoint directory: ``url`` through fsspec with ``storage_options``."""

    def __init__(self, url, storage_options=None):
        self.url = str(url).rstrip("/")
        try:
            import fsspec     # here, not at import: a job that never checkpoints never loads it
        except ImportError:
            raise CheckpointError(f"checkpoint URL {self.url}: checkpoints are written through "
                                  f"fsspec, which is not installed; pip install 'psframe[s3]' "
                                  f"(or just fsspec for local paths)", url=self.url) from None
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise CheckpointError(f"checkpoint URL {self.url}: {exc}; use a local path or an "
                                  f"fsspec URL whose backend is installed (s3:// needs s3fs)",
                                  url=self.url) from None

    @property
    def local(self):
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    @property
    def threads(self):
        """Files to move at once: several on remote stores, which answer each request after a
        round trip; one on a local disk, where copying through the page cache is the whole cost
        and more threads per server only compete for the cores every server shares."""
        return 1 if self.local else REMOTE_THREADS

    def path(self, name):
        return posixpath.join(self.root, name)

    def name_url(self, name):
        """The URL of file ``name`` (what error messages show)."""
        return f"{self.url}/{name}"

    def makedirs(self, name=""):
        """Create the directory ``name`` (the root if empty) where the store has directories;
        object stores (S3, GCS) have none, and asking would cost a round trip to the bucket."""
        if not self.local:
            return
        try:
            self.fs.makedirs(self.path(name) if name else self.root, exist_ok=True)
        except Exception as exc:
            raise _io_error(exc, self.name_url(name) if name else self.url, "creating") from None

    def exists(self, name):
        try:
            return self.fs.exists(self.path(name))
        except Exception as exc:
            raise _io_error(exc, self.name_url(name), "checking") from None

    # -- arrays ---------------------------------------------------------------------------
    def write_array(self, name, array):
        """Write ``array`` as ``.npy`` file ``name``; returns its record (a JSON-able dict)."""
        array = np.asarray(array)
        if not array.flags.c_contiguous:      # (np.ascontiguousarray would make a 0-d array 1-d)
            array = array.copy(order="C")
        if array.dtype.hasobject:
            raise CheckpointError(f"{self.name_url(name)}: dtype {array.dtype} holds Python objects; "
                                  f"checkpoints store numeric arrays only", url=self.name_url(name))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
        data = memoryview(array.reshape(-1)).cast("B") if array.size else memoryview(b"")
        crc = 0
        try:
            with self.fs.open(self.path(name), "wb") as f:
                f.write(header.getvalue())
                for lo in range(0, len(data), PIECE_BYTES):
                    piece = data[lo:lo + PIECE_BYTES]
                    crc = zlib.crc32(piece, crc)
                    f.write(piece)
        except Exception as exc:
            raise _io_error(exc, self.name_url(name), "writing") from None
        return {"path": name, "dtype": array.dtype.str, "shape": list(array.shape),
                "bytes": len(data), "crc32": crc}

    def read_array(self, record):
        """Read and verify the array of a ``write_array`` record.

        Raises:
            CheckpointError: the file is missing, is not a ``.npy`` file, differs from its
                record (dtype, shape), is truncated or longer, or fails its CRC-32.
        """
        name = record["path"]
        url = self.name_url(name)
        try:
            with self.fs.open(self.path(name), "rb") as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read(f)
                except ValueError as exc:
                    raise _corrupt(url, f"not a .npy file: {exc}") from None
                if fortran or dtype.str != record["dtype"] or list(shape) != list(record["shape"]):
                    raise _corrupt(url, f"holds {dtype.str}{list(shape)}, the manifest says "
                                        f"{record['dtype']}{list(record['shape'])}")
                out = np.empty(shape, dtype)
                view = memoryview(out.reshape(-1)).cast("B") if out.size else memoryview(bytearray())
                got = _read_into(f, view)
                if got != record["bytes"] or got != len(view):
                    raise _corrupt(url, f"truncated: {got} of {record['bytes']} data bytes")
                if f.read(1):
                    raise _corrupt(url, f"longer than the {record['bytes']} data bytes recorded")
        except CheckpointError:
            raise
        except Exception as exc:
            raise _io_error(exc, url, "reading") from None
        if zlib.crc32(view) != record["crc32"]:
            raise _corrupt(url, "its data fails the CRC-32 check (the bytes changed after it was written)")
        return out

    # -- JSON -----------------------------------------------------------------------------
    def write_json(self, name, obj):
        blob = json.dumps(obj, indent=1).encode()
        try:
            self.fs.pipe_file(self.path(name), blob)
        except Exception as exc:
            raise _io_error(exc, self.name_url(name), "writing") from None

    def read_json(self, name):
        url = self.name_url(name)
        try:
            blob = self.fs.cat_file(self.path(name))
        except Exception as exc:
            raise _io_error(exc, url, "reading") from None
        try:
            obj = json.loads(blob)
        except ValueError as exc:
            raise _corrupt(url, f"not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise _corrupt(url, "not a JSON object")
        return obj


def parallel_map(fn, items, threads):
    """``[fn(x) for x in items]`` on up to ``threads`` daemon threads (storage answers per
    request, so files go several at a time; daemon, so a store that hangs cannot keep a
    process from exiting when its job ends). Raises the first error once all threads stopped."""
    items = list(items)
    results, errors, lock = [None] * len(items), [], threading.Lock()
    todo = iter(enumerate(items))

    def work():
        while not errors:
            with lock:
                nxt = next(todo, None)
            if nxt is None:
                return
            try:
                results[nxt[0]] = fn(nxt[1])
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=work, daemon=True, name="psframe-checkpoint-io")
               for _ in range(min(threads, len(items)))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return results


def _read_into(f, view):
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _corrupt(url, why):
    return CheckpointError(f"checkpoint file {url} is corrupt: {why}; restore it from a copy or "
                           f"load an earlier checkpoint (psframe.checkpoint.latest skips none "
                           f"that are complete, so delete this one)", url=url)


def _io_error(exc, url, action):
    if isinstance(exc, CheckpointError):
        return exc
    if isinstance(exc, FileNotFoundError):
        why = ("the directory or bucket does not exist; create it" if action == "writing" else
               "the checkpoint is incomplete or the URL is wrong")
        return CheckpointError(f"{action} checkpoint file {url}: not found; {why}", url=url)
    if isinstance(exc, PermissionError):
        return CheckpointError(f"{action} checkpoint file {url}: access denied ({exc}); check "
                               f"the credentials and permissions", url=url)
    return CheckpointError(f"{action} checkpoint file {url} failed: {type(exc).__name__}: {exc}",
                           url=url)
