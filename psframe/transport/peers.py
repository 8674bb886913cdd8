"""Talking to the scheduler from any node: registration and the heartbeat/abort watch."""
import logging
import os
import socket
import threading
import time


from ..config import EXIT_ABORTED_BY_PEER
from ..errors import JobAbortedError, PeerLostError, PSTimeoutError, from_body
from ..protocol import Command, codec
from . import addresses, sockets

logger = logging.getLogger(__name__)


def bind_ip(host):
    """The address to bind for ``host`` (a name resolves to its IP; unresolvable: all)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "*"


def request(sock, cmd, sender, timeout, what, body=None, msg_id=1):
    """Send one request on a DEALER and wait for its reply; returns the reply body.

    Raises:
        PSTimeoutError: no reply within ``timeout`` (names ``what``).
        JobAbortedError: the scheduler aborted the job (carries its reason).
        PSError subclass: the peer's error reply.
    """
    sockets.send_frames(sock, codec.encode(cmd, msg_id, sender, body=body))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sockets.poll([sock], left):
            raise PSTimeoutError(f"{what}: no answer within {timeout:g}s")
        msg = codec.decode(sockets.recv_frames(sock))
        if msg.cmd is Command.ABORT:
            raise JobAbortedError(f"job aborted by the scheduler: {msg.body.get('reason')}")
        if msg.cmd is Command.ERROR:
            raise from_body(msg.body)
        if msg.id == msg_id:
            return msg.body


def register(sock, config, role, rank, address="", local_address=""):
    """Register with the scheduler and wait for the address book (every node is in)."""
    addresses.parse(config.scheduler)
    body = {"role": role, "rank": rank, "host": config.host, "address": address,
            "local_address": local_address}
    return request(sock, Command.REGISTER, f"{role}:{rank}", config.start_timeout + 5.0,
                   f"registering with the scheduler at {config.scheduler} (is it running and "
                   f"reachable? PSFRAME_SCHEDULER={config.scheduler})", body)


class HeartbeatThread(threading.Thread):
    """Heartbeats to the scheduler from its own socket and watches for abort/shutdown.

    On abort (or when the scheduler goes silent) it records the reason, which every blocking
    KVStore call checks; if the main thread does not end the process within ``grace`` seconds
    (it may be busy computing), the process exits with status 1 so no job hangs.
    """

    def __init__(self, ctx, config, name, grace=5.0):
        super().__init__(name="psframe-heartbeat", daemon=True)
        self.ctx, self.config, self.node = ctx, config, name
        self.grace = grace
        self.reason = None
        self.error_cls = PeerLostError
        self._stop_evt = threading.Event()

    def stop(self):
        self._stop_evt.set()

    def run(self):
        sock = sockets.dealer(self.ctx, self.config.scheduler)
        try:
            self._loop(sock)
        finally:
            sock.close(0)

    def _loop(self, sock):
        cfg = self.config
        last_answer = time.monotonic()
        next_beat = 0.0
        while not self._stop_evt.is_set():
            now = time.monotonic()
            if now >= next_beat:
                sockets.send_frames(sock, codec.encode(Command.HEARTBEAT, 0, self.node))
                next_beat = now + cfg.heartbeat_interval
            if sockets.poll([sock], min(cfg.heartbeat_interval, 0.2)):
                try:
                    msg = codec.decode(sockets.recv_frames(sock))
                except Exception as exc:  # a bad frame must not kill the watch
                    logger.warning("ignored a malformed message from the scheduler: %s", exc)
                    continue
                last_answer = time.monotonic()
                if msg.cmd is Command.ABORT:
                    return self._abort(f"job aborted by the scheduler: {msg.body.get('reason')}",
                                       JobAbortedError)
                if msg.cmd is Command.SHUTDOWN:
                    return
            elif time.monotonic() - last_answer > cfg.heartbeat_timeout:
                return self._abort(f"lost the scheduler at {cfg.scheduler}: no answer for "
                                   f"{cfg.heartbeat_timeout:g}s (it died, or the network is down)",
                                   PeerLostError)

    def _abort(self, reason, error_cls):
        self.error_cls = error_cls
        self.reason = reason
        # said once, by whoever ends the process: the main thread's next KVStore call raises
        # it (one line, errors.stopped_by_peer_line), or this thread after the grace period
        logger.info("%s", reason)
        if not self._stop_evt.wait(self.grace):
            logger.error("exiting: %s (this process did not stop by itself within %gs)", reason, self.grace)
            os._exit(EXIT_ABORTED_BY_PEER)

    def check(self):
        """Raise if the job was aborted (called from every blocking wait)."""
        if self.reason is not None:
            raise self.error_cls(self.reason)
