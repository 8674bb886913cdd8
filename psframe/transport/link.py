"""Every process's line to the scheduler: heartbeats out, abort and shutdown in, and the
scheduler's silence detected. Servers drive a ``SchedulerLink`` from their own poll loop;
workers run one in a ``HeartbeatThread`` beside the training loop."""
import logging
import os
import threading
import time

from ..config import EXIT_ABORTED_BY_PEER
from ..errors import JobAbortedError, PeerLostError
from ..protocol import Command, codec
from . import auth, sockets

logger = logging.getLogger(__name__)


class SchedulerLink:
    """Heartbeats to the scheduler on ``sock`` (default: a new DEALER of its own) and what the
    scheduler says back. ``ended`` turns True on shutdown or abort; after an abort (or when the
    scheduler went silent for ``heartbeat_timeout``) ``reason`` says why and ``error_cls`` is
    the error a blocked call raises."""

    def __init__(self, ctx, config, name, sock=None, status=None, on_message=None):
        self.config, self.name = config, name
        self.on_message = on_message   # (msg) -> None: what else the scheduler sends
        self.status = status     # () -> a msgpack-able dict each heartbeat carries, or None
        self.sock = sock if sock is not None else sockets.dealer(
            ctx, config.scheduler, security=auth.for_config(config), peer="scheduler")
        self.poll_interval = min(config.heartbeat_interval, 0.2)
        self.shutdown = False
        self.reason = None
        self.error_cls = PeerLostError
        self._last_answer = time.monotonic()
        self._next_beat = 0.0

    @property
    def ended(self):
        return self.shutdown or self.reason is not None

    def beat(self, now):
        """Send a heartbeat when one is due; never waits (a server's loop drives this): a
        scheduler that stops reading shows as its silence, not as a stuck loop."""
        if now >= self._next_beat:
            body = self.status() if self.status is not None else None
            try:
                sockets.send_frames(self.sock, codec.encode(Command.HEARTBEAT, 0, self.name, body=body),
                                    block=False)
            except sockets.WouldBlock:
                pass
            self._next_beat = now + self.config.heartbeat_interval

    def receive(self):
        """Read one message from the scheduler (the socket is readable)."""
        try:
            msg = codec.decode(sockets.recv_frames(self.sock))
        except Exception as exc:  # a bad frame must not kill the watch
            logger.warning("ignored a malformed message from the scheduler: %s", exc)
            return
        self._last_answer = time.monotonic()
        if msg.cmd is Command.ABORT:
            self._abort(f"job aborted by the scheduler: {msg.body.get('reason')}", JobAbortedError)
        elif msg.cmd is Command.SHUTDOWN:
            self.shutdown = True
        elif msg.cmd is not Command.HEARTBEAT and self.on_message is not None:
            self.on_message(msg)

    def check_silence(self, now):
        """Call when nothing came: past ``heartbeat_timeout`` the scheduler counts as lost."""
        cfg = self.config
        if now - self._last_answer > cfg.heartbeat_timeout:
            self._abort(f"lost the scheduler at {cfg.scheduler}: no answer for "
                        f"{cfg.heartbeat_timeout:g}s (it died, or the network is down)", PeerLostError)

    def _abort(self, reason, error_cls):
        self.error_cls, self.reason = error_cls, reason
        # said once, by whoever ends the process: a worker's next KVStore call raises it (one
        # line, errors.stopped_by_peer_line), a server's loop returns, or the heartbeat thread
        # exits after its grace period
        logger.info("%s", reason)

    def check(self):
        """Raise if the job was aborted (called from every blocking wait)."""
        if self.reason is not None:
            raise self.error_cls(self.reason)

    def close(self):
        self.sock.close(0)


class HeartbeatThread(threading.Thread):
    """A worker's ``SchedulerLink``, run on its own thread and socket.

    On abort (or when the scheduler goes silent) the reason is recorded, which every blocking
    KVStore call checks; if the main thread does not end the process within ``grace`` seconds
    (it may be busy computing), the process exits with status 1 so no job hangs.
    """

    def __init__(self, ctx, config, name, grace=5.0, status=None):
        super().__init__(name="psframe-heartbeat", daemon=True)
        self.ctx, self.config, self.node, self.status = ctx, config, name, status
        self.grace = grace
        self.link = None
        self._stop_evt = threading.Event()

    @property
    def reason(self):
        return self.link.reason if self.link is not None else None

    @property
    def error_cls(self):
        return self.link.error_cls if self.link is not None else PeerLostError

    def stop(self):
        self._stop_evt.set()

    def run(self):
        link = SchedulerLink(self.ctx, self.config, self.node, status=self.status)
        self.link = link
        try:
            while not self._stop_evt.is_set() and not link.ended:
                link.beat(time.monotonic())
                if sockets.poll([link.sock], link.poll_interval):
                    link.receive()
                else:
                    link.check_silence(time.monotonic())
        finally:
            link.close()
        if link.reason is not None and not self._stop_evt.wait(self.grace):
            logger.error("exiting: %s (this process did not stop by itself within %gs)",
                         link.reason, self.grace)
            os._exit(EXIT_ABORTED_BY_PEER)

    def check(self):
        """Raise if the job was aborted (called from every blocking wait)."""
        if self.link is not None:
            self.link.check()
