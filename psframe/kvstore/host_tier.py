"""A worker's side of the host tier: its gradients go to the host's aggregator through shared
memory, and pulled values come back the same way.

On a host with more than one worker of the job (and ``PSFRAME_HIERARCHICAL`` not 0), a worker
copies each pushed value into its own slot of a shared segment and tells the aggregator (a thread
of local rank 0, ``host_aggregator``) which keys it pushed; the aggregator sums the host's slots
in local-rank order and sends one push per key-part to the servers, and pulls each value once
into the segment's result slot, from which every worker copies it out. Only short msgpack
notes cross the socket to the aggregator (an abstract unix socket: per machine and network
namespace, gone with its process); the arrays never do.

A slot is written again only after the aggregator has summed what it held ("consumed"), so a
worker runs at most one step per key ahead of the host's slowest worker; servers bound the
host's run-ahead as for any worker (``PSFRAME_MAX_STEPS_AHEAD``).
"""
import hashlib
import itertools
import os
import sys
import time

import zmq

from .. import arrays
from ..aggregation import reduce, shm
from ..errors import ConfigError, PSTimeoutError, from_wire
from ..transport import sockets
from .host_notes import pack, unpack


def enabled(config):
    """The tier is on for a worker with local peers unless PSFRAME_HIERARCHICAL=0 (Linux only:
    it needs /dev/shm and abstract unix sockets)."""
    return (config.hierarchical and config.local_size > 1 and sys.platform.startswith("linux")
            and os.path.isdir(shm.SHM_DIR))


def address(config):
    """Where the aggregator of ``config``'s host listens: one name per job and host."""
    host = hashlib.sha1(config.host.encode()).hexdigest()[:8]
    return f"ipc://@{shm.job_prefix(config.scheduler)}-tier-{host}"


def join(store):
    """The host-tier link of ``store`` (a DistKVStore), or None when the tier is off; local
    rank 0 also starts the host's aggregator."""
    if not enabled(store.config):
        return None
    return TierLink(store)


class TierLink:
    """One worker's connection to its host's aggregator (see the module docstring)."""

    def __init__(self, store):
        from .host_aggregator import HostAggregator
        self.store, self.config = store, store.config
        self.local_rank, self.local_size = store.local_rank, store.local_size
        self.aggregator = None
        self._ids = itertools.count(1)
        self._ctx = sockets.new_context()
        where = address(self.config)
        if self.local_rank == 0:
            self.aggregator = HostAggregator(store, where)
            self.aggregator.start()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IDENTITY, str(self.local_rank).encode())
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(where)
        self._segments = []
        self._slots, self._results = {}, {}
        self._pushed, self._consumed = {}, {}
        self._pending = {}          # request id -> ("push", keys) | ("call", None)
        self._replies = {}          # request id -> reply of a call
        self._errors = []           # errors nobody waited for (pushes): raised at the next call

    # -- operations -----------------------------------------------------------------------
    def init(self, keys):
        """Attach the slots of ``keys`` (after the servers have them): the aggregator makes one
        segment per init call, laid out by the call's key list."""
        infos = [self.store._keys[k] for k in keys]
        reply = self._call({"op": "init", "keys": [[k, i.dtype, list(i.shape)] for k, i in zip(keys, infos)]},
                           f"init of {len(keys)} keys")
        try:
            seg = shm.Segment.attach(reply["segment"], reply["size"])
        except ConfigError:
            self._job_gone_first()
            raise
        reduce.pin(seg)
        self._segments.append(seg)
        arena = reply["arena"]
        for k, info, off in zip(keys, infos, reply["offsets"]):
            self._slots[k] = seg.array(self.local_rank * arena + off, info.dtype, info.shape)
            self._results[k] = seg.array(self.local_size * arena + off, info.dtype, info.shape)
            self._pushed[k] = self._consumed[k] = 0
        self._send({"op": "attached", "index": reply["index"]})

    def push(self, keys, values):
        self._fill(keys, values)
        mid = self._send({"op": "push", "keys": keys})
        self._pending[mid] = ("push", keys)
        self._raise_deferred()

    def pushed(self, key):
        """How many pushes of ``key`` this worker made through the tier."""
        return self._pushed.get(key, 0)

    def pull(self, keys, outs):
        self._call({"op": "pull", "keys": keys, "steps": [self._pushed[k] for k in keys]}, "pull")
        self._copy_out(keys, outs)

    def pushpull(self, keys, values, outs):
        """Start a pushpull; returns ``(done, wait)``: ``done()`` says whether the host's value
        is in, ``wait(timeout)`` copies it into ``outs`` (raising the call's error, if any)."""
        self._fill(keys, values)
        mid = self._send({"op": "pushpull", "keys": keys, "steps": [self._pushed[k] for k in keys]})
        self._pending[mid] = ("pushpull", keys)

        def done():
            self._receive_ready()
            return mid in self._replies

        def wait(timeout):
            self._wait(lambda: mid in self._replies, "pushpull", timeout)
            self._take_reply(mid)
            self._copy_out(keys, outs)
        return done, wait

    def join(self):
        """This worker pushes no more (its pushes are merged): the host's sums go on without
        it, counting it as zero at its turn (the servers do not wait for it, see
        ``server/hosts.py``)."""
        self._call({"op": "join"}, "leaving the host's sums")

    def steps_loaded(self):
        """Continue every key from the step count a checkpoint load set (nothing is in flight:
        the load flushed first); the aggregator forgets the values it pulled before."""
        for k in self._pushed:
            self._pushed[k] = self._consumed[k] = self.store._keys[k].pushes
        self.forget_values()

    def forget_values(self):
        """The host's pulled values are old (a checkpoint was loaded, or the others trained on
        while this worker was in kv.join): the next pull of each key fetches it anew."""
        self._call({"op": "forget"}, "forgetting pulled values")

    def flush(self, timeout=None):
        """Return once every push of this worker is merged by the servers."""
        self._wait(lambda: all(self._consumed[k] == n for k, n in self._pushed.items()),
                   "finishing pushes", timeout)
        self._call({"op": "flush"}, "finishing pushes", timeout=timeout)

    def close(self):
        """Leave the tier; local rank 0 then waits for its aggregator to see every peer go."""
        self._send({"op": "bye"})
        if self.aggregator is not None:
            self._wait(lambda: not self.aggregator.is_alive(), "the host's workers to finish")
            self.aggregator.raise_failure()
        self.abandon()

    def abandon(self):
        """Close without waiting (the job is failing or gone)."""
        if self.aggregator is not None:
            self.aggregator.stop()
            self.aggregator.join(timeout=5)
        if not self._sock.closed:
            self._sock.close(0)
            self._ctx.term()
        self._slots.clear()
        self._results.clear()
        for seg in self._segments:
            seg.close()
        self._segments = []

    # -- helpers --------------------------------------------------------------------------
    def _job_gone_first(self):
        """A segment that vanished before this worker attached it: the aggregator ends (and
        unlinks) when the job is aborted, which this worker's heartbeat hears a moment later;
        that is the cause to report, so wait for it briefly before blaming the segment."""
        deadline = time.monotonic() + 2 * self.config.heartbeat_interval + 1.0
        while time.monotonic() < deadline:
            self.store._failures.check()
            time.sleep(0.05)

    def _fill(self, keys, values):
        """Copy ``values`` into this worker's slots, once the aggregator consumed what they held."""
        self._wait(lambda: all(self._consumed[k] == self._pushed[k] for k in keys), "a push (slot in use)")
        for k, v in zip(keys, values):
            reduce.copy_to_host(self._slots[k], v)
            self._pushed[k] += 1

    def _copy_out(self, keys, outs):
        try:
            for k, targets in zip(keys, outs):
                src = self._results[k]
                for out in targets:
                    arrays.copy_into(out, src)
        finally:
            self._send({"op": "release", "keys": keys})

    def _call(self, msg, what, timeout=None):
        mid = self._send(msg)
        self._pending[mid] = ("call", None)
        self._wait(lambda: mid in self._replies, what, timeout)
        return self._take_reply(mid)

    def _take_reply(self, mid):
        """The reply ``mid``; an error reply raises (and hands out no value to give back)."""
        reply = self._replies.pop(mid)
        if "error" in reply:
            raise from_wire(*reply["error"])
        return reply

    def _send(self, msg):
        mid = next(self._ids)
        msg["id"] = mid
        self._sock.send(pack(msg))
        return mid

    def _wait(self, cond, what, timeout=None):
        timeout = self.config.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not cond():
            self.store._failures.check()
            if self.aggregator is not None:
                self.aggregator.raise_failure()
            self._raise_deferred()
            left = deadline - time.monotonic()
            if left <= 0:
                raise PSTimeoutError(
                    f"host tier: {what} not done within {timeout:g}s (PSFRAME_TIMEOUT); waiting on the "
                    f"aggregator of host {self.config.host} (a thread of its local rank 0). In dist_sync "
                    f"every worker must push each key the same number of times")
            if self._sock.poll(int(min(left, 0.1) * 1000)):
                self._receive_ready()

    def _receive_ready(self):
        while self._sock.poll(0):
            self._receive(unpack(self._sock.recv()))

    def _receive(self, msg):
        mid = msg.get("id", 0)
        kind, keys = self._pending.pop(mid, (None, None))
        if kind is None:            # a note nobody asked for: an error of the aggregator
            if "error" in msg:
                self._errors.append(from_wire(*msg["error"]))
            return
        if kind == "push":
            for k in keys:
                self._consumed[k] += 1
            if "error" in msg:
                self._errors.append(from_wire(*msg["error"]))
            return
        if kind == "pushpull":
            for k in keys:
                self._consumed[k] = self._pushed[k]
        self._replies[mid] = msg

    def _raise_deferred(self):
        if self._errors:
            err, self._errors = self._errors[0], []
            raise err
