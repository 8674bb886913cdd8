"""Keep the server's freed heap memory warm (glibc).

Every message a server receives lands in a buffer zmq mallocs for it, and every step needs
array-sized buffers. glibc hands out buffers above its mmap threshold as fresh pages (and trims
freed heap back to the OS), so each megabyte-scale receive pays page faults again: on the 2-core
VM this was measured on, about a quarter of a 16 MiB push+pull round (1 server x 2 workers). A
server is a long-running process whose working set is its shard plus messages in flight, so it
serves buffers up to 32 MiB from the heap and keeps what it frees for the next message. Only
servers do this: workers run the user's code, whose memory behaviour psframe leaves alone.
"""
import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20                     # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory():
    """Apply the settings above; returns False (and changes nothing) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    logger.debug("heap kept warm: %s", ok)
    return ok
