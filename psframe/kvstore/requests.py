"""Requests a worker has in flight, and the progress that completes them (ps-lite's Customer).

Every message to a server is a ``Request`` under a fresh id; ``Customer.progress_until`` polls
every socket, so a wait on one request completes every reply that arrives meanwhile (ps-lite's
ticket idea): pushes and pulls to different servers are in flight at once and a pull waits only
for its own key. Pulled bytes are received straight into the request's targets
(``recv_into``). A failed push has no waiter: its error is kept and raised by the next call.
"""
import itertools
import logging
import time

import numpy as np

from .. import arrays, timeline
from ..errors import JobAbortedError, PSTimeoutError, ProtocolError, from_body
from ..protocol import Command, codec
from ..transport import sockets

logger = logging.getLogger(__name__)

NP_DTYPES = {name: np.dtype(name) for name in arrays.DTYPES}
BODY_REPLIES = (Command.STATS, Command.SAVE_CHECKPOINT)    # requests whose reply body is kept


class Ack:
    """A push a reply acknowledges: part ``part`` of ``key`` (its ``info``), or, with ``group``
    set, a fusion group's push (every member merged at once)."""
    __slots__ = ("key", "info", "part", "group")

    def __init__(self, key, info, part=0, group=None):
        self.key, self.info, self.part, self.group = key, info, part, group


class Request:
    """One message to one server, and what to do with its reply."""
    __slots__ = ("server", "cmd", "acks", "targets", "body", "done", "error", "tracker", "t0")

    def __init__(self, server, cmd, acks=(), targets=None):
        self.server, self.cmd = server, cmd
        self.acks = acks            # Acks: the pushes this reply acknowledges
        self.targets = targets or {}   # (key, part) -> flat host array the reply fills
        self.body = None               # the reply's body (stats, checkpoint index)
        self.done, self.error, self.tracker, self.t0 = False, None, None, 0.0


class Customer:
    """Ids, pending requests, progress and deferred errors of one worker.

    ``sockets``: the server sockets replies come in on; ``scheduler``: the scheduler socket,
    which between requests only speaks to abort the job (None: none, the host tier's uplink); ``check``: raises once the job is gone
    (the heartbeat's verdict); ``timeout``: the default for waits (PSFRAME_TIMEOUT)."""

    def __init__(self, server_sockets, scheduler, check, timeout, trace=None, outgoing=None):
        self._ids = itertools.count(1)
        self._pending = {}             # id -> Request (in flight)
        self._errors = []              # errors of requests nobody waits for (pushes)
        self._scheduler, self._check, self._timeout = scheduler, check, timeout
        self._poller = sockets.Poller([*server_sockets, *([scheduler] if scheduler is not None else [])])
        self._timeline = trace
        self._outgoing = outgoing      # routes.SendQueue: what waits to be sent, by priority

    def next_id(self):
        return next(self._ids)

    def new(self, server, cmd, acks=(), targets=None):
        """``(id, Request)``; the request counts as pending once ``add``-ed (after its send)."""
        req = Request(server, cmd, acks, targets)
        if self._timeline is not None:
            req.t0 = timeline.now_us()
        return next(self._ids), req

    def add(self, msg_id, req):
        self._pending[msg_id] = req

    # -- waiting ------------------------------------------------------------------------
    def wait(self, reqs, what, timeout=None):
        self.progress_until(lambda: all(r.done for r in reqs), what, timeout)
        for r in reqs:
            if r.error is not None:
                raise r.error

    def wait_sent(self, reqs):
        """Return once zmq no longer references the caller's buffers (zero-copy sends)."""
        for r in reqs:
            if r.tracker is not None:
                # a tracker's completion is no socket event (and the push's ack may already
                # be in): look at it every millisecond, not at the next reply
                self.progress_until(lambda: r.tracker.done, "sending a push", step=0.001)
                r.tracker = None

    def wait_merged(self, info, max_ahead):
        """Backpressure: bound a key's unmerged pushes (server memory stays bounded)."""
        if info.pushes - info.acked >= max_ahead:
            self.progress_until(lambda: info.pushes - info.acked < max_ahead,
                                f"backpressure: {info.pushes - info.acked} unmerged pushes")

    def flush(self, timeout=None):
        self.progress_until(lambda: not self._pending, "finishing outstanding requests", timeout)
        self.raise_deferred()

    def take_errors(self):
        """The errors of requests nobody waits for, handed over (a caller that relays them)."""
        errors, self._errors = self._errors, []
        return errors

    def receive_ready(self, sock):
        """Take every reply waiting on ``sock`` (for a caller that polls the sockets itself)."""
        while sockets.readable(sock):
            self._receive(sock)

    def raise_deferred(self):
        if self._errors:
            err, self._errors = self._errors[0], []
            raise err

    def progress_until(self, cond, what, timeout=None, step=0.1):
        timeout = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not cond():
            self._check()
            self.raise_deferred()
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = sorted({r.server for r in self._pending.values() if not r.done})
                raise PSTimeoutError(
                    f"{what}: not done within {timeout:g}s (PSFRAME_TIMEOUT); waiting on servers "
                    f"{waiting}. In dist_sync every worker must push each key the same number of "
                    f"times; a worker that stopped pushing stalls the step")
            if self._outgoing is not None and len(self._outgoing):
                # queued sends go out as zmq writes earlier ones: no socket event, so look often
                self._outgoing.pump()
                step = min(step, 0.001)
            self._progress(min(left, step))

    # -- receiving ----------------------------------------------------------------------
    def _progress(self, timeout):
        for sock in self._poller.poll(timeout):
            if sock is self._scheduler:
                self._receive_from_scheduler()
                continue
            while sockets.readable(sock):
                self._receive(sock)

    def _receive_from_scheduler(self):
        """Between requests the scheduler only speaks to abort the job (it may reach this
        socket before the heartbeat thread's: right after start-up)."""
        while sockets.readable(self._scheduler):
            msg = codec.decode(sockets.recv_frames(self._scheduler))
            if msg.cmd is Command.ABORT:
                raise JobAbortedError(f"job aborted by the scheduler: {msg.body.get('reason')}")

    def _receive(self, sock):
        head = sock.recv(copy=False)
        try:
            msg = codec.decode_header(head.buffer)
        except ProtocolError:
            sockets.drain_rest(sock)
            raise
        req = self._pending.pop(msg.id, None)
        if req is None:
            sockets.drain_rest(sock)
            logger.warning("ignored a reply to unknown request %d", msg.id)
            return
        try:
            _read_arrays(sock, msg, req)
        except ProtocolError as exc:
            req.error = exc
        if sockets.drain_rest(sock) and req.error is None:
            req.error = ProtocolError(f"reply {msg.id} carries more frames than its header declares")
        req.done = True
        if self._timeline is not None:
            self._trace(req)
        if msg.cmd is Command.ERROR:
            req.error = from_body(msg.body)
            if req.cmd is Command.PUSH or req.cmd is Command.SPARSE_PUSH:
                self._errors.append(req.error)
            return
        if req.cmd in BODY_REPLIES:
            req.body = msg.body
        for ack in req.acks:
            if ack.group is not None:
                for member in ack.group.infos:
                    member.acked += 1
                continue
            info = ack.info
            counts = info.part_acked
            if counts is None:
                info.acked += 1
            else:     # a push is merged once every part of it is
                counts[ack.part] += 1
                info.acked = min(counts)

    def _trace(self, req):
        """One timeline span per key of a finished request (send to reply, on the server's row)."""
        end = timeline.now_us()
        if req.cmd in (Command.PUSH, Command.PUSHPULL):
            keys = dict.fromkeys(a.key for a in req.acks)
        elif req.cmd is Command.PULL:
            keys = dict.fromkeys(k for k, _ in req.targets)
        else:
            keys = {req.cmd.value: None}
        for k in keys:
            self._timeline.complete(f"{req.cmd.value} {timeline.key_name(k)}", req.cmd.value, req.t0, end,
                                    tid=req.server)


def _read_arrays(sock, msg, req):
    for i, desc in enumerate(msg.arrays):
        if not sock.getsockopt(sockets.zmq.RCVMORE):
            raise ProtocolError(f"reply {msg.id} declares {len(msg.arrays)} arrays, has {i}")
        target = req.targets.get((desc.key, desc.part))
        if target is None or target.nbytes != desc.nbytes or target.dtype != NP_DTYPES[desc.dtype]:
            sock.recv(copy=False)      # consume the frame that does not fit
            raise ProtocolError(f"reply for key {desc.key!r} part {desc.part}: {desc.dtype}"
                                f"{list(desc.shape)} does not fit the pull's output")
        n = sock.recv_into(memoryview(target).cast("B"))
        if n != desc.nbytes:
            raise ProtocolError(f"reply for key {desc.key!r}: frame has {n} bytes, header "
                                f"declares {desc.nbytes}")
