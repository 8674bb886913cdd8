"""The scheduler's event loop: receive, decode, hand to MembershipState, send what it returns."""
import logging
import time

from ..errors import ProtocolError
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
                    return 1
                if self.state.finished:
                    logger.info("every worker finished; servers told to shut down")
                    return 0
        finally:
            self.sock.close(sockets.LINGER_MS)

    def _drain(self):
        while sockets.poll([self.sock], 0):
            frames = sockets.recv_frames(self.sock)
            peer = frames[0].bytes
            try:
                msg = codec.decode(frames[1:])
                self._send(self._dispatch(peer, msg))
            except ProtocolError as exc:
                logger.warning("rejected a message: %s", exc)
                self._send_raw(peer, codec.encode(Command.ERROR, 0, "scheduler",
                                                  body={"name": "ProtocolError", "message": str(exc)}))

    def _dispatch(self, peer, msg):
        st, now, b = self.state, time.monotonic(), msg.body
        if msg.cmd is Command.HEARTBEAT:
            return st.heartbeat(peer, msg.sender, now)
        if msg.cmd is Command.REGISTER:
            return st.register(peer, msg.id, b.get("role"), b.get("rank", -1), b.get("host", "?"),
                               b.get("address", ""), now)
        if msg.cmd is Command.BARRIER:
            return st.enter_barrier(peer, msg.id, b.get("rank"), b.get("note"))
        if msg.cmd is Command.PLACE:
            return st.place(peer, msg.id, _rank_of(msg.sender), b.get("keys", []))
        if msg.cmd is Command.DONE:
            return st.done(peer, msg.id, msg.sender)
        if msg.cmd is Command.ABORT:
            return st.fail(msg.sender, b.get("reason", "unknown"))
        raise ProtocolError(f"the scheduler does not handle {msg.cmd.value!r}")

    def _send(self, sends):
        for s in sends:
            self._send_raw(s.peer, codec.encode(Command(s.cmd), s.id, "scheduler", body=s.body))

    def _send_raw(self, peer, frames):
        try:
            sockets.send_frames(self.sock, [peer, *frames])
        except Exception as exc:  # the peer is gone; liveness handles it
            logger.debug("could not reach a peer: %s", exc)


def _rank_of(sender):
    role, _, rank = sender.partition(":")
    if role != "worker" or not rank.isdigit():
        raise ProtocolError(f"sender {sender!r} is not a worker")
    return int(rank)
