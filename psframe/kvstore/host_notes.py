"""What the host tier's workers and aggregator tell each other, and the aggregator's records.

Notes are small msgpack maps over the host's abstract unix socket (``{"op", "id", ...}``: init,
attached, push, pull, pushpull, release, flush, forget, join, bye; replies carry the note's id, or 0 for an
error nobody asked about); the arrays stay in shared memory.
"""
import msgpack

from ..errors import ConfigError


def pack(msg):
    return msgpack.packb(msg, use_bin_type=True)


def unpack(frame):
    msg = msgpack.unpackb(frame, raw=False, strict_map_key=False, max_bin_len=0, max_ext_len=0)
    if not isinstance(msg, dict):
        raise ConfigError(f"host tier: a message is {type(msg).__name__}, not a map")
    return msg


class Note:
    """A worker's push / pull / pushpull note and what it still waits for."""
    __slots__ = ("who", "id", "op", "keys", "unconsumed", "unserved", "done")

    def __init__(self, who, mid, op, keys):
        self.who, self.id, self.op, self.keys = who, mid, op, keys
        self.unconsumed = set(keys) if op != "pull" else set()
        self.unserved = set(keys) if op != "push" else set()
        self.done = False


class Entry:
    """One key on this host: the local ranks' slots, the result slot, and who waits."""
    __slots__ = ("key", "slots", "result", "waiting", "readers", "pulling", "value_step",
                 "value_seq", "pull_seq", "waiters", "pushing")

    def __init__(self, key, slots, result):
        self.key, self.slots, self.result = key, slots, result
        self.waiting = [None] * len(slots)   # per local rank: its unconsumed push note
        self.readers = 0            # workers copying out of ``result``
        self.pulling = False        # a pull is writing ``result``
        self.value_step = -1        # the result holds at least this step (sync)
        self.value_seq = 0          # ... from the pull issued as number value_seq (async)
        self.pull_seq = 0           # pulls issued so far
        self.waiters = []           # [note, wanted step, pull_seq when it came]
        self.pushing = 0            # upstream pushes in flight (async: the next one waits)


class Upstream:
    """One request batch to the servers and what to do when it is sent / done."""
    __slots__ = ("reqs", "on_sent", "on_done", "sent")

    def __init__(self, reqs, on_sent, on_done):
        self.reqs, self.on_sent, self.on_done, self.sent = reqs, on_sent, on_done, False
