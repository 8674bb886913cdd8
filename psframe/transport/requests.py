"""The one receive-and-reply loop of a service's ROUTER socket (scheduler and servers), and the
one dispatch rule: a message with command ``c`` goes to the service's ``handle_<c>``.

It is also the one place a message's sender is checked: the sender a header claims must be the
identity its connection authenticated as (ZAP's User-Id), and that identity's role must be
allowed to send the command (``commands.SENDERS``). Replies never block the loop (``Outbox``)."""
import logging

from ..errors import ProtocolError, RefusedError, as_reply
from ..protocol import codec
from . import auth, sockets
from .outbox import Outbox

logger = logging.getLogger(__name__)


class RequestLoop:
    """Base of a service that answers requests on ``self.sock`` (a ROUTER, made with
    ``bind_router``). A subclass sets ``who`` (how errors name it: "scheduler", "server"),
    ``name`` (the sender of its replies) and implements ``handle_<command>(peer, msg)``
    methods; ``handle`` may be overridden to pass handlers more (it must find them with
    ``handler``)."""

    who = "service"
    name = "service"
    sock = None

    def bind_router(self, config, bind):
        """Make ``self.sock`` with ``bind(security)`` (a ``sockets.router_bind*`` call; returns
        the socket or ``(socket, port)``), authenticated by this process's credentials, with
        refused handshakes counted and replies sent through an ``Outbox``. Returns what
        ``bind`` returned."""
        self.security = auth.for_config(config)
        made = bind(self.security)
        self.sock = made[0] if isinstance(made, tuple) else made
        self.handshakes = auth.HandshakeWatch(self.sock)
        self.identities = {}         # peer (routing id) -> the identity it sent as
        self.refused = 0             # messages refused: a claimed sender or a role not allowed
        self.outbox = Outbox(self.sock, config.send_timeout, self.peer_name,
                             max_held_bytes=config.max_message_bytes)
        return made

    def peer_name(self, peer):
        return f"{self.identities.get(peer, 'an unknown peer')} (connection {peer.hex()})"

    def security_counters(self):
        """What this service refused so far, for stats and logs."""
        return {"refused_connections": self.handshakes.poll(), "refused_messages": self.refused,
                "cut_off_peers": self.outbox.cut_count}

    def housekeeping(self, now=None):
        """Send held replies that now fit, cut off peers that stopped reading, count refused
        handshakes. Call often from the service's loop."""
        self.outbox.flush(now)
        self.handshakes.poll()

    def close_router(self, linger):
        self.handshakes.close()
        self.sock.close(linger)
        self.security.close()

    def drain(self, limit=None):
        """Handle every waiting request (at most ``limit``, so a loop's other duties still run
        under a flood). A request whose handling raises gets an error reply; the loop goes on."""
        sock, n, cut = self.sock, 0, self.outbox.cut
        while (limit is None or n < limit) and sockets.readable(sock):
            n += 1
            frames = sockets.recv_frames(sock)
            peer = frames[0].bytes
            if peer in cut:
                continue
            msg_id = 0
            try:
                msg = codec.decode(frames[1:])
                msg_id = msg.id
                codec.check_sender(msg, self.security.sender(frames[0]))
                self.identities[peer] = msg.sender
                self.received(msg)
                self.handle(peer, msg)
            except Exception as exc:   # a bad message must never take the service down
                exc = as_reply(exc, self.who)
                if isinstance(exc, RefusedError):
                    self.refused += 1
                logger.warning("error reply to a request: %s", exc)
                self.failed(peer, msg_id, exc)

    def received(self, msg):
        """Hook: a request decoded, about to be handled."""

    def handle(self, peer, msg):
        self.handler(msg)(peer, msg)

    def handler(self, msg):
        """The ``handle_<command>`` method for ``msg``.

        Raises:
            ProtocolError: this service does not handle that command.
        """
        handler = getattr(self, f"handle_{msg.cmd.value}", None)
        if handler is None:
            raise ProtocolError(f"the {self.who} does not handle {msg.cmd.value!r}")
        return handler

    def failed(self, peer, msg_id, exc):
        """Tell ``peer`` its request ``msg_id`` failed with ``exc``."""
        self.send_raw(peer, codec.encode_error(msg_id, self.name, exc))

    def send_raw(self, peer, frames, track=False):
        """Send now, or hold for a peer whose queue is full (never waits)."""
        try:
            return self.outbox.send(peer, frames, track=track)
        except Exception as exc:  # the peer went away; liveness reports it
            logger.warning("could not reach a peer: %s", exc)
            return None
