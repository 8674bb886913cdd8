"""A bounded background prefetch: one thread runs an iterator ahead of its consumer.

At most ``depth`` items wait in the queue, so memory stays bounded. An exception in the producer
is handed to the consumer and re-raised there (with its original traceback), the consumer's wait
for an item is bounded by ``timeout``, and ``close()`` stops and joins the thread.
"""
import logging
import queue
import threading
import time

from ..errors import PSTimeoutError

log = logging.getLogger(__name__)

_ITEM, _END, _ERROR = "item", "end", "error"
_POLL = 0.1


class Prefetcher:
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead.

    Args:
        source: an iterable; it is iterated only in the background thread.
        depth: queue capacity (>= 1).
        timeout: seconds the consumer waits for one item before ``PSTimeoutError``.
        name: names the thread and appears in errors (e.g. the dataset URL).
    """

    def __init__(self, source, depth, timeout, name="prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth {depth} must be >= 1")
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._timeout = float(timeout)
        self._name = name
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True,
                                        name=f"psframe-prefetch:{name}")
        self._thread.start()

    def _put(self, entry):
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source):
        it = iter(source)
        try:
            for item in it:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put((_ERROR, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                kind, value = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                if time.monotonic() >= deadline:
                    self.close(join_timeout=0.5)   # the thread is stuck; do not wait for it
                    raise PSTimeoutError(
                        f"{self._name}: the background reader produced nothing for "
                        f"{self._timeout:g}s; the store is stalled (check the endpoint and the "
                        f"network) or raise timeout=") from None
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError(f"{self._name}: the prefetch thread ended without a result")
        if kind == _ITEM:
            return value
        self._done = True
        self.close()
        if kind == _END:
            raise StopIteration
        raise value

    def close(self, join_timeout=5.0):
        """Stop the producer, drop queued items and join the thread (bounded by join_timeout)."""
        self._done = True
        self._stop.set()
        deadline = time.monotonic() + join_timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(_POLL)
        if self._thread.is_alive():
            log.warning("%s: prefetch thread still busy in a read after %.1fs; left as a daemon",
                        self._name, join_timeout)
