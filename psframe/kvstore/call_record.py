"""A worker's flight recorder: the blocking call it is in and the last ones it finished.

Every blocking ``KVStore`` call enters the recorder on the way in and leaves it on the way out.
The heartbeat carries ``wire()`` to the scheduler, so when a job stops making progress the
scheduler can say which rank waits where, and which rank never made the call the others wait
in (see ``psframe.scheduler.stalls``). Collective calls are also counted per name (``init`` per
key), which is what tells "never called init('big')" from "is late".
"""
import collections
import threading
import time

KEYS_SHOWN = 4       # keys named per call; the rest are counted
LAST_CALLS = 4       # finished calls kept
COLLECTIVES = ("init", "set_optimizer", "barrier", "set_gradient_compression",
               "save_checkpoint", "load_checkpoint", "join")


def key_text(keys):
    """``'w'``, ``'w', 3``, or ``'a', 'b', 'c', 'd' and 6 more``."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:KEYS_SHOWN])
    return shown + (f" and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else "")


class CallRecord:
    """What one worker is doing, cheap enough to update on every call (a lock and a tuple)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._current = None         # (call, keys text, step, started, names it needs)
        self._last = collections.deque(maxlen=LAST_CALLS)
        self._counts = collections.Counter()        # "init:'big'", "set_optimizer", ...
        self._depth = 0      # calls made inside a call (set_optimizer's barrier) are its own

    def enter(self, call, keys=(), step=None):
        """The worker starts blocking call ``call`` on ``keys`` (at sync ``step``, if any)."""
        self._depth += 1
        if self._depth > 1:
            return
        # what the call needs every rank to have called: itself for a collective, the keys'
        # init for a data call (so a stall report can say who never called it)
        names = [f"init:{k!r}" for k in keys[:KEYS_SHOWN]] if call in ("init", "push", "pull",
                                                                        "pushpull") else [call]
        if call == "close":
            names = []     # not a collective: a rank closing early is behind, not the others
        entry = (call, key_text(keys), step, self._clock(), names)
        with self._lock:
            if call in COLLECTIVES:
                self._counts.update(names)
            self._current = entry

    def leave(self):
        self._depth -= 1
        if self._depth:
            return
        with self._lock:
            if self._current is not None:
                self._last.append(self._current[:3])
            self._current = None

    def call(self, call, keys=(), step=None):
        """Context manager form of ``enter``/``leave``."""
        return _Entered(self, call, keys, step)

    def wire(self):
        """The msgpack-able record the heartbeat carries."""
        with self._lock:
            cur, last, counts = self._current, list(self._last), dict(self._counts)
        body = {"last": [list(c) for c in last], "counts": counts}
        if cur is not None:
            call, keys, step, started, names = cur
            body["call"] = [call, keys, step, round(self._clock() - started, 3), names]
        return body


class _Entered:
    __slots__ = ("record", "args")

    def __init__(self, record, call, keys, step):
        self.record, self.args = record, (call, keys, step)

    def __enter__(self):
        self.record.enter(*self.args)
        return self

    def __exit__(self, *exc):
        self.record.leave()
