"""The one receive-and-reply loop of a service's ROUTER socket (scheduler and servers), and the
one dispatch rule: a message with command ``c`` goes to the service's ``handle_<c>``."""
import logging

from ..errors import ProtocolError, as_reply
from ..protocol import codec
from . import sockets

logger = logging.getLogger(__name__)


class RequestLoop:
    """Base of a service that answers requests on ``self.sock`` (a ROUTER). A subclass sets
    ``who`` (how errors name it: "scheduler", "server"), ``name`` (the sender of its replies) and
    implements ``handle_<command>(peer, msg)`` methods; ``handle`` may be overridden to pass
    handlers more (it must find them with ``handler``)."""

    who = "service"
    name = "service"

    def drain(self, limit=None):
        """Handle every waiting request (at most ``limit``, so a loop's other duties still run
        under a flood). A request whose handling raises gets an error reply; the loop goes on."""
        sock, n = self.sock, 0
        while (limit is None or n < limit) and sockets.readable(sock):
            n += 1
            frames = sockets.recv_frames(sock)
            peer = frames[0].bytes
            msg_id = 0
            try:
                msg = codec.decode(frames[1:])
                msg_id = msg.id
                self.received(msg)
                self.handle(peer, msg)
            except Exception as exc:   # a bad message must never take the service down
                exc = as_reply(exc, self.who)
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
        try:
            return sockets.send_frames(self.sock, [peer, *frames], track=track)
        except Exception as exc:  # the peer went away; liveness reports it
            logger.warning("could not reach a peer: %s", exc)
            return None
