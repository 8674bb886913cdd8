"""Replies of a service's ROUTER without ever blocking its loop: a peer whose queue is full
(zmq's per-peer high-water mark: it stopped reading) gets its replies held here, in order, and
is cut off, and named, once it leaves them unread for ``send_timeout`` seconds or lets more
than ``max_held`` replies or ``max_held_bytes`` pile up; everyone else is served meanwhile.
A held reply is a copy (zero-copy buffers would be written by the next step meanwhile), except
for received zmq frames, which nobody writes."""
import collections
import logging
import time

import zmq

from . import sockets

logger = logging.getLogger(__name__)

MAX_HELD = 256          # replies held for one peer before it is cut off regardless of time


class _Held:
    __slots__ = ("since", "replies", "nbytes")

    def __init__(self, since):
        self.since, self.replies, self.nbytes = since, collections.deque(), 0


class Outbox:
    """Non-blocking sends to the peers of ``sock``; ``name_of(peer)`` names a peer in logs."""

    def __init__(self, sock, send_timeout, name_of=lambda peer: peer.hex(), max_held=MAX_HELD,
                 max_held_bytes=1 << 30):
        self.sock, self.send_timeout, self.name_of = sock, send_timeout, name_of
        self.max_held, self.max_held_bytes = max_held, max_held_bytes
        self.held = {}                # peer -> _Held, oldest reply first
        self.cut = set()              # peers cut off: their messages are dropped
        self.cut_count = 0

    def send(self, peer, frames, track=False):
        """Send now if the peer's queue has room, else hold the reply. Returns the zero-copy
        tracker of a sent message (None if held, cut off or not tracked)."""
        if peer in self.cut:
            return None
        held = self.held.get(peer)
        if held is None:
            try:
                return sockets.send_frames(self.sock, [peer, *frames], track=track, block=False)
            except sockets.WouldBlock:
                held = self.held[peer] = _Held(time.monotonic())
        frames = [f if type(f) is zmq.Frame else bytes(f) for f in frames]
        held.replies.append(frames)
        held.nbytes += sum(len(f) for f in frames)
        if len(held.replies) > self.max_held or held.nbytes > self.max_held_bytes:
            self._cut(peer, f"{len(held.replies)} replies ({held.nbytes} bytes) waited for it to read")
        return None

    def flush(self, now=None):
        """Send what peers now have room for; cut off peers that read nothing for too long."""
        if not self.held:
            return
        now = time.monotonic() if now is None else now
        for peer in list(self.held):
            held = self.held[peer]
            while held.replies:
                try:
                    sockets.send_frames(self.sock, [peer, *held.replies[0]], block=False)
                except sockets.WouldBlock:
                    break
                held.nbytes -= sum(len(f) for f in held.replies.popleft())
                held.since = now
            if not held.replies:
                del self.held[peer]
            elif now - held.since > self.send_timeout:
                self._cut(peer, f"it read none of its replies for {now - held.since:.1f}s "
                                f"(PSFRAME_SEND_TIMEOUT={self.send_timeout:g})")

    def _cut(self, peer, why):
        self.held.pop(peer, None)
        self.cut.add(peer)
        self.cut_count += 1
        logger.error("cut off %s: %s; its requests are dropped from now on, everyone else is "
                     "still served", self.name_of(peer), why)
