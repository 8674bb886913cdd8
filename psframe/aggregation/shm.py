"""Shared-memory segments of the host tier: ``/dev/shm`` files viewed as numpy arrays.

A segment is created by the host's aggregator and attached by every worker on the host; once all
of them have attached it is unlinked, so its name leaves ``/dev/shm`` while the memory lives on
in the mappings and goes when the last process holding it exits (also on kill -9). Names begin
with the job's prefix (``job_prefix``: derived from the scheduler's address, which is unique
among running jobs), so whoever supervises a job can remove what a process killed between
creation and the last attach left behind (``sweep``).

Plain files under ``/dev/shm`` rather than ``multiprocessing.shared_memory``: the latter's
resource tracker (Python < 3.13) unlinks or warns about segments that another process created,
which is exactly the sharing done here.
"""
import hashlib
import mmap
import os

import numpy as np

from ..errors import ConfigError

SHM_DIR = "/dev/shm"
ALIGN = 64           # every array in a segment starts on a cache line


def job_prefix(scheduler_address):
    """``psframe-<10 hex>``: the name prefix of every segment of the job whose scheduler listens
    at ``scheduler_address`` (the launcher computes the same to sweep)."""
    digest = hashlib.sha1(str(scheduler_address).encode()).hexdigest()[:10]
    return f"psframe-{digest}"


def aligned(nbytes):
    return -(-nbytes // ALIGN) * ALIGN


def layout(sizes):
    """``(offsets, total)``: each of ``sizes`` (bytes) placed one after the other, aligned."""
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += aligned(n)
    return offsets, total


class Segment:
    """One mapped ``/dev/shm`` file. ``array(offset, dtype, shape)`` views part of it."""

    def __init__(self, name, size, fd, created):
        self.name, self.size, self.created = name, size, created
        self._map = mmap.mmap(fd, max(size, 1), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.buffer = np.frombuffer(self._map, dtype=np.uint8)
        self.linked = True

    @classmethod
    def create(cls, name, size):
        """A new zero-filled segment ``name`` of ``size`` bytes (fails if the name exists)."""
        path = _path(name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            raise ConfigError(f"shared-memory segment {path} already exists: a process of this "
                              f"job created it before; remove it (rm {path}) and start again") from None
        except OSError as exc:
            raise ConfigError(f"cannot create {path} ({exc}): the host tier needs a writable "
                              f"{SHM_DIR}; set PSFRAME_HIERARCHICAL=0 to run without it") from None
        try:
            try:
                # reserve the pages now: a tmpfs past its size would otherwise kill the process
                # that first touches a missing page (SIGBUS), not fail here
                os.posix_fallocate(fd, 0, max(size, 1))
            except OSError as exc:
                raise ConfigError(
                    f"cannot reserve {size} bytes in {SHM_DIR} ({exc.strerror}): the host tier needs "
                    f"(workers on the host + 1) x the bytes of the keys one init call creates; "
                    f"enlarge {SHM_DIR} (e.g. docker run --shm-size) or set PSFRAME_HIERARCHICAL=0") from None
            return cls(name, size, fd, created=True)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, name, size):
        """Map the existing segment ``name``; it must hold at least ``size`` bytes."""
        path = _path(name)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ConfigError(f"cannot attach shared-memory segment {path} ({exc}): the host's "
                              f"aggregator (local rank 0) made it moments ago; is {SHM_DIR} "
                              f"shared by every worker of this host?") from None
        try:
            have = os.fstat(fd).st_size
            if have < size:
                raise ConfigError(f"shared-memory segment {path} has {have} bytes, {size} expected")
            return cls(name, size, fd, created=False)
        finally:
            os.close(fd)

    def array(self, offset, dtype, shape):
        """A writable numpy view of ``shape``/``dtype`` at byte ``offset``."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset < 0 or offset + n > self.size:
            raise ValueError(f"{n} bytes at {offset} pass the end of segment {self.name} ({self.size})")
        return self.buffer[offset:offset + n].view(dtype).reshape(shape)

    def unlink(self):
        """Remove the name (mappings stay valid); idempotent."""
        if self.linked:
            self.linked = False
            try:
                os.unlink(_path(self.name))
            except FileNotFoundError:
                pass

    def close(self):
        """Unmap, once no view of the segment is left (else the mapping goes with the process)."""
        self.buffer = None
        try:
            self._map.close()
        except BufferError:      # numpy views still alive: the process exit unmaps
            pass


def _path(name):
    if "/" in name or not name:
        raise ValueError(f"bad segment name {name!r}")
    return os.path.join(SHM_DIR, name)


def leftovers(prefix):
    """Names in ``/dev/shm`` that start with ``prefix`` (a job's, from ``job_prefix``)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix + "-"))
    except FileNotFoundError:
        return []


def sweep(prefix):
    """Remove every segment of the job ``prefix``; returns the names removed."""
    removed = []
    for name in leftovers(prefix):
        try:
            os.unlink(_path(name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed
