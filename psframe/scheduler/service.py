"""The scheduler's event loop: receive, decode, hand to MembershipState, send what it returns."""
import logging
import time

from ..config import EXIT_ABORTED_BY_PEER
from ..errors import ProtocolError, as_reply
from ..protocol import Command, codec
from ..transport import addresses, peers, sockets
from .membership import MembershipState

logger = logging.getLogger(__name__)


class SchedulerService:
    """Runs until every worker is done (exit 0) or the job fails (exit 1)."""

    def __init__(self, config, ctx=None):
        self.config = config
        self.ctx = ctx or sockets.new_context()
        _, host, port = addresses.parse(config.scheduler)
        self.sock = sockets.router_bind(self.ctx, f"tcp://{peers.bind_ip(host)}:{port}")
        self.state = MembershipState(config.num_workers, config.num_servers, config.bigarray_bound,
                                     config.start_timeout, config.heartbeat_timeout, time.monotonic())

    def run(self):
        logger.info("scheduler at %s waiting for %d workers and %d servers", self.config.scheduler,
                    self.config.num_workers, self.config.num_servers)
        try:
            while True:
                for _ in sockets.poll([self.sock], 0.1):
                    self._drain()
                self._send(self.state.tick(time.monotonic()))
                if self.state.failure:
                    logger.error("job failed: %s", self.state.failure)
                    # a node that reported its own failure is the root cause; we only relay it
                    return EXIT_ABORTED_BY_PEER if self.state.failure_reported else 1
                if self.state.finished:
                    logger.info("every worker finished; servers told to shut down")
                    return 0
        finally:
            self.sock.close(sockets.LINGER_MS)

    def _drain(self):
        while sockets.readable(self.sock):
            frames = sockets.recv_frames(self.sock)
            peer = frames[0].bytes
            msg_id = 0
            try:
                msg = codec.decode(frames[1:])
                msg_id = msg.id
                self._send(self._dispatch(peer, msg))
            except Exception as exc:   # a bad message must never take the job down
                exc = as_reply(exc, "scheduler")
                logger.warning("rejected a message: %s", exc)
                self._send_raw(peer, codec.encode_error(msg_id, "scheduler", exc))

    def _dispatch(self, peer, msg):
        st, now, b = self.state, time.monotonic(), msg.body
        workers = self.config.num_workers
        if msg.cmd is Command.HEARTBEAT:
            return st.heartbeat(peer, msg.sender, now)
        if msg.cmd is Command.REGISTER:
            return st.register(peer, msg.id, _field(b, "role", str), _field(b, "rank", int),
                               _field(b, "host", str), _field(b, "address", str, ""), now,
                               _field(b, "local_address", str, ""))
        if msg.cmd is Command.BARRIER:
            return st.enter_barrier(peer, msg.id, codec.sender_rank(msg.sender, "worker", workers),
                                    b.get("note"), _agree(b.get("agree")))
        if msg.cmd is Command.PLACE:
            return st.place(peer, msg.id, codec.sender_rank(msg.sender, "worker", workers),
                            _placements(b))
        if msg.cmd is Command.DONE:
            return st.done(peer, msg.id, msg.sender)
        if msg.cmd is Command.ABORT:
            return st.fail(msg.sender, str(b.get("reason", "unknown")))
        raise ProtocolError(f"the scheduler does not handle {msg.cmd.value!r}")

    def _send(self, sends):
        for s in sends:
            self._send_raw(s.peer, codec.encode(Command(s.cmd), s.id, "scheduler", body=s.body))

    def _send_raw(self, peer, frames):
        try:
            sockets.send_frames(self.sock, [peer, *frames])
        except Exception as exc:  # the peer is gone; liveness handles it
            logger.debug("could not reach a peer: %s", exc)


def _field(body, name, kind, default=None):
    value = body.get(name, default)
    if type(value) is not kind:
        raise ProtocolError(f"malformed message: body.{name} is {value!r}, not a {kind.__name__}")
    return value


def _placements(body):
    """``body["keys"]``: ``[[key, size, nbytes(, [member keys])], ...]`` with int/str keys and
    int sizes."""
    keys = body.get("keys")
    ok = type(keys) is list and all(
        type(k) is list and len(k) in (3, 4) and type(k[0]) in (int, str)
        and type(k[1]) is int and type(k[2]) is int and k[1] >= 0 and k[2] >= 0
        and (len(k) == 3 or type(k[3]) is list and all(type(m) in (int, str) for m in k[3]))
        for k in keys)
    if not ok:
        raise ProtocolError("malformed message: body.keys is not a list of [key, size, nbytes]")
    return keys


def _agree(raw):
    """A barrier's ``agree`` field: None, or ``{"what": str, "value": ...}``."""
    if raw is not None and (type(raw) is not dict or type(raw.get("what")) is not str or "value" not in raw):
        raise ProtocolError("malformed message: body.agree is not {\"what\": str, \"value\": ...}")
    return raw
