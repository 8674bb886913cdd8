"""Routes from a worker to its servers: the links, the lane each entry takes, and messages.

A destination is a lane ``(server index, big)``: every server is reached over TCP and, when it
runs on this machine and PSFRAME_IPC allows, big entries also over its unix socket. Where an
entry lives (``place_key``, ``place_group``) decides its lane once, so its pushes and pulls stay
in order. A call's arrays to one lane are cut into messages of about ``MESSAGE_BYTES``
(``Batches``), each filled as one ``Batch`` by the builders in ``messages``. Destinations are
known only here (a lane names one, ``ServerLinks`` holds its sockets), so a new kind of peer
that takes a worker's messages is one more link here, not a change to the builders or the API.
"""
import numpy as np

from .. import sharding
from ..protocol.codec import ITEMSIZE
from ..transport import addresses, auth, sockets

# Big key-parts travel as several arrays of at most sharding.CHUNK_BYTES, and one call's arrays
# to a server as several messages of at most about MESSAGE_BYTES (so a big key's chunks go one
# per message, and small arrays share one). zmq hands a multipart message over only once all of
# it has arrived, so bounded messages let the server merge and answer the first megabytes while
# later ones are still on the wire, keep its receive queue (memory) small, and let zmq reuse
# warm heap blocks instead of mapping fresh pages for one huge message.
MESSAGE_BYTES = 4 << 20

# A server on the worker's own machine is reached over TCP loopback and, with PSFRAME_IPC, also
# over its unix socket. Each stored entry (key-part or fusion group) keeps to one of the two, so
# its pushes and pulls stay in order: entries of at least UNIX_LANE_BYTES take the unix socket,
# smaller ones TCP. A unix socket's send buffer is fixed at net.core.wmem_default (208 KiB on
# Linux; zmq cannot raise it for ipc), so a 1 MiB message crosses in many sleep/wake rounds, while
# TCP loopback grows its buffers; past a few MiB the unix socket's lighter path wins. Measured
# here with raw pyzmq moving a 1x2 round: 1 MiB 0.81-0.88 ms over TCP, 1.13-1.37 ms over the
# unix socket; 4 MiB 5.6-6.2 ms over TCP, 4.4-5.1 ms over the unix socket.
UNIX_LANE_BYTES = 2 << 20

# Messages wait in the worker's SendQueue, highest priority first, while a socket already holds
# this many bytes that zmq has not yet written out. A message handed to zmq cannot be overtaken,
# so this bounds how long a high-priority message waits behind a big low-priority one (16 MiB
# is a few ms of loopback TCP), while keeping enough queued in zmq that the link never idles
# between two progress calls of the worker.
SEND_WINDOW_BYTES = 16 << 20


def lane(server, entry_bytes):
    """``(server, big)``: the lane an entry of ``entry_bytes`` travels on to ``server``."""
    return server, entry_bytes >= UNIX_LANE_BYTES


def group_lane(group):
    return lane(group.server, group.size * ITEMSIZE[group.dtype])


def key_lane(info, part):
    """Where a key-part travels; a fusion group's member goes its group's way."""
    if info.group is not None:
        return group_lane(info.group)
    return lane(part.server, part.size * ITEMSIZE[info.dtype])


def place_key(info, server, num_servers):
    """Record where a key placed on ``server`` lives: its parts, cut over the servers when big."""
    info.parts = sharding.parts_of(server, info.size, num_servers, np.dtype(info.dtype).itemsize)
    info.part_acked = [0] * len(info.parts) if len(info.parts) > 1 else None


def place_group(group, server, num_servers):
    """Record where ``group`` lives; its keys can also travel alone, to the same server.
    Returns the members as the server checks them."""
    group.server = server
    for m, info in enumerate(group.infos):
        info.group, info.member = group, m
        place_key(info, server, num_servers)
    return group.wire_members()


class Batch:
    """The contents of one message: the arrays it carries (``descs``, ``bufs``) or describes
    (``meta``: init on workers other than rank 0, pulls), an init's fusion ``groups``, the pushes
    its reply acknowledges (``acks``), where the reply's arrays land (``targets``: ``(key,
    part)`` -> flat host array) and the reused send buffers it carries (``send_buffers``)."""
    __slots__ = ("descs", "bufs", "meta", "groups", "acks", "targets", "send_buffers")

    def __init__(self):
        self.descs, self.bufs, self.meta, self.groups, self.acks = [], [], [], [], []
        self.targets, self.send_buffers = {}, []


class Batches:
    """Messages per destination (a lane, see ``lane``), a new one whenever the current one would
    pass ``MESSAGE_BYTES`` (a message always takes at least one array). Iterates ``(destination,
    Batch)`` in the order the messages were opened."""

    def __init__(self):
        self.open = {}        # destination -> [Batch, bytes]
        self.all = []         # (destination, Batch)

    def add(self, to, nbytes):
        """The ``Batch`` of the message to ``to`` that the next ``nbytes`` go into."""
        cur = self.open.get(to)
        if cur is None or (cur[1] and cur[1] + nbytes > MESSAGE_BYTES):
            cur = self.open[to] = [Batch(), 0]
            self.all.append((to, cur[0]))
        cur[1] += nbytes
        return cur[0]

    def __iter__(self):
        return iter(self.all)


class ServerLinks:
    """The worker's sockets to each server: TCP (small entries, control) and the one for big
    entries (the server's unix socket when reachable, else the same TCP socket)."""

    def __init__(self, ctx, config, book):
        self.addresses = list(book["servers"])
        local = book.get("servers_local") or [""] * len(self.addresses)
        self.local_addresses = [loc if config.ipc and loc and addresses.local_reachable(loc) else None
                                for loc in local]     # the server's unix socket, on this machine
        self.tcp = []                # per server: its TCP socket
        self.lanes = []              # per server: (TCP socket, socket for big entries)
        self.sent_messages = {"tcp": 0, "unix": 0}    # requests per transport (diagnostics)
        security = auth.for_config(config)     # each link proves this worker's identity
        for i, (address, loc) in enumerate(zip(self.addresses, self.local_addresses)):
            tcp = sockets.dealer(ctx, address, security=security, peer=f"server:{i}")
            self.tcp.append(tcp)
            self.lanes.append((tcp, sockets.dealer(ctx, loc, security=security, peer=f"server:{i}")
                               if loc else tcp))

    def __len__(self):
        return len(self.tcp)

    def sockets(self):
        """Every distinct socket, TCP ones first."""
        return [*self.tcp, *(big for tcp, big in self.lanes if big is not tcp)]

    def send(self, to, frames, track):
        """Send ``frames`` over lane ``to``; returns zmq's tracker when ``track``."""
        server, big = to
        tcp, sock = self.lanes[server][0], self.lanes[server][big]
        self.sent_messages["tcp" if sock is tcp else "unix"] += 1
        return sockets.send_frames(sock, frames, track=track)

    def socket_of(self, to):
        server, big = to
        return self.lanes[server][big]

    def describe(self):
        return ", ".join(f"{a} ({loc})" if loc else a for a, loc in zip(self.addresses, self.local_addresses))

    def close(self):
        for s in self.sockets():
            s.close(0)


class SendTracker:
    """zmq's tracker for a message that may still wait in the ``SendQueue``: ``done`` once the
    message went to zmq and zmq no longer references its buffers."""
    __slots__ = ("sent", "zmq")

    def __init__(self):
        self.sent, self.zmq = False, None

    @property
    def done(self):
        return self.sent and (self.zmq is None or self.zmq.done)


class _Outgoing:
    __slots__ = ("priority", "seq", "to", "sock", "frames", "keys", "nbytes", "tracker")


class SendQueue:
    """The worker's outgoing messages, sent highest ``priority`` first (then in call order).

    A message goes to zmq at once while its socket holds fewer than ``window`` unsent bytes;
    otherwise it waits here, and ``pump`` (called by every wait of the worker) sends what the
    window allows. Messages of one entry (they share a key) never overtake each other, so an
    entry's pushes and pulls reach its server in call order whatever their priorities; big
    entries travel as many messages of at most ``MESSAGE_BYTES``, so a high-priority key
    overtakes the rest of a large low-priority push already queued."""

    def __init__(self, links, window=SEND_WINDOW_BYTES):
        self._links, self._window = links, window
        self._queue = []             # _Outgoing, in call order
        self._in_zmq = {}            # socket -> [(SendTracker, nbytes)] not yet written out
        self._seq = 0

    def __len__(self):
        return len(self._queue)

    def send(self, to, frames, keys, nbytes, priority=0):
        """Queue a message of ``nbytes`` array bytes for ``keys`` on lane ``to``; returns its
        ``SendTracker``."""
        item = _Outgoing()
        item.priority, item.seq, item.to = priority, self._seq, to
        item.sock, item.frames, item.keys, item.nbytes = self._links.socket_of(to), frames, keys, nbytes
        item.tracker = SendTracker()
        self._seq += 1
        self._queue.append(item)
        self.pump()
        return item.tracker

    def pump(self):
        """Hand zmq every queued message its socket's window allows, best priority first."""
        if not self._queue:
            return
        room = {}
        for item in sorted(self._queue, key=lambda i: (-i.priority, i.seq)):
            if room.setdefault(item.sock, self._room(item.sock)) <= 0 or self._behind(item):
                continue
            self._queue.remove(item)
            item.tracker.zmq = self._links.send(item.to, item.frames, track=True)
            item.tracker.sent = True
            item.frames = None
            if item.tracker.zmq is not None:
                self._in_zmq.setdefault(item.sock, []).append((item.tracker, item.nbytes))
                room[item.sock] -= item.nbytes

    def _room(self, sock):
        held = [(t, n) for t, n in self._in_zmq.get(sock, ()) if not t.done]
        self._in_zmq[sock] = held
        return self._window - sum(n for _, n in held)

    def _behind(self, item):
        """True while an earlier queued message on the same socket shares one of its keys."""
        for other in self._queue:
            if other.seq >= item.seq:
                return False
            if other.sock is item.sock and not other.keys.isdisjoint(item.keys):
                return True
        return False

    def drop(self):
        """Forget what was never sent (the worker is leaving after a failure)."""
        self._queue.clear()
