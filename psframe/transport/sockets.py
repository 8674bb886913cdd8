"""ZeroMQ socket lifecycle and zero-copy sends. Moves lists of buffers; knows nothing of arrays.

Frames of at least ``COPY_THRESHOLD`` bytes are sent without a copy: zmq keeps a reference to
the caller's buffer until the bytes are on the wire. ``SendGuard`` remembers which buffers are
still in flight so their owner waits before writing to them (below the threshold a copy is
cheaper than the bookkeeping: pyzmq's own measurements put the cross-over near 64 KiB).

A received frame sent on as it is (``received_frame``) costs even less: zmq counts references
to its own message, with none of pyzmq's per-send bookkeeping for Python buffers (a helper
thread that must take the GIL once per send to let go of the buffer). Nothing says when that
send is done, so ``SendGuard`` marks such memory shared for good, and its owner writes to a copy.
"""
import errno
import logging
import time
import weakref

import numpy as np
import zmq

from ..errors import ConfigError, PSTimeoutError

logger = logging.getLogger(__name__)

COPY_THRESHOLD = 65536
LINGER_MS = 2000      # how long close() may spend flushing queued messages
SEND_TIMEOUT_MS = 60000   # a send blocked this long (peer not reading) is an error, not a hang


def new_context(io_threads=1):
    """A zmq context; each of its ``io_threads`` moves the bytes of some of its connections."""
    return zmq.Context(io_threads)


def end_context(ctx):
    """Close what is still open on ``ctx`` and end it, letting queued messages leave first (at
    most ``LINGER_MS``): a process that exits without this loses what it sent last, such as
    the scheduler's shutdown to a server busy loading a checkpoint."""
    ctx.destroy(linger=LINGER_MS)


def dealer(ctx, address, identity=None, security=None, peer=None):
    """A DEALER connected to ``address`` (connect never blocks; unreachable peers show up as
    timeouts of the requests sent to them), proving this process's identity to ``peer``
    (``"scheduler"``, ``"server:0"``) as ``security`` (an ``auth.Security``) says."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    if security is not None:
        security.connect(sock, peer)
    try:
        sock.connect(address)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise ConfigError(f"cannot connect to {address}: {exc.strerror}; the address must be "
                          f"tcp://host:port with a host name this machine resolves") from None
    return sock


def _router(ctx, security):
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # an unroutable reply is an error, not a drop
    if security is not None:
        security.bind(sock)
    return sock


def router_bind(ctx, address, security=None):
    """A ROUTER bound to ``address``, authenticating every peer as ``security`` says.

    Raises:
        ConfigError: the address is in use or not local, naming it and the fix.
    """
    sock = _router(ctx, security)
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close(0)
        hint = ("another process holds the port: pick a free one (psframe-launch does)"
                if exc.errno == errno.EADDRINUSE else "the host must name an interface of this machine")
        raise ConfigError(f"cannot bind {address}: {exc.strerror}; {hint}") from None
    return sock


def router_bind_random(ctx, host, security=None):
    """A ROUTER bound to a port the OS picks on ``host``; returns ``(socket, port)``."""
    sock = _router(ctx, security)
    try:
        port = sock.bind_to_random_port(f"tcp://{host}", min_port=1024, max_port=65535, max_tries=200)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise ConfigError(f"cannot bind a port on {host!r}: {exc.strerror}; set PSFRAME_BIND_HOST "
                          f"to an address of this machine") from None
    return sock, port


class WouldBlock(Exception):
    """A non-blocking send found the peer's queue full; nothing of the message was sent."""


def send_frames(sock, frames, track=False, block=True):
    """Send a multipart message; big frames go without a copy, ``zmq.Frame`` objects by zmq's
    own reference. Returns a MessageTracker when ``track`` and some buffer went zero-copy, else
    None. ``block=False``: raise ``WouldBlock`` instead of waiting when the queue is full (zmq
    accepts or refuses a message as a whole at its first frame)."""
    last = len(frames) - 1
    tracker = None
    sizes = [len(f) if type(f) is zmq.Frame else memoryview(f).nbytes for f in frames]
    if max(sizes) >= COPY_THRESHOLD:
        check_size(sock, max(sizes))
    first = 0 if block else zmq.NOBLOCK
    i = 0
    try:
        for i, frame in enumerate(frames):
            flags = (zmq.SNDMORE if i < last else 0) | (first if i == 0 else 0)
            if type(frame) is zmq.Frame:         # a received frame: zmq's reference, no copy
                sock.send(frame, flags, copy=False)
                continue
            big = sizes[i] >= COPY_THRESHOLD
            if big:
                t = sock.send(frame, flags, copy=False, track=track)
                if track:
                    tracker = t
            else:
                sock.send(frame, flags, copy=True)
    except zmq.Again:
        if not block and i == 0:
            raise WouldBlock() from None
        raise PSTimeoutError(f"a send blocked for {SEND_TIMEOUT_MS / 1000:g}s: the receiving "
                             f"process stopped reading its messages") from None
    return tracker


def check_size(sock, nbytes):
    """Refuse to send a frame the receiving socket would refuse (every process of a job has the
    same ``PSFRAME_MAX_MESSAGE_BYTES``; zmq would drop the connection without a word).

    Raises:
        ConfigError: naming the size, the limit and the fixes.
    """
    limit = sock.maxmsgsize
    if 0 <= limit < nbytes:
        raise ConfigError(f"a message part of {nbytes} bytes is larger than PSFRAME_MAX_MESSAGE_BYTES="
                          f"{limit}, which every socket of the job refuses; raise it for the whole job "
                          f"(psframe-launch --env PSFRAME_MAX_MESSAGE_BYTES=N) or use more servers "
                          f"(keys above PSFRAME_BIGARRAY_BOUND are cut over them)")


def recv_frames(sock):
    """Receive a whole multipart message as zmq Frames (no copy of big frames)."""
    return sock.recv_multipart(copy=False)


def received_frame(array):
    """The zmq Frame whose bytes ``array`` is exactly (a view of a whole received frame, as
    ``np.frombuffer(frame.buffer)`` makes), or None."""
    buf = _owner(array).base
    # a contiguous view as big as the whole buffer it lies in is all of it
    if (type(buf) is not memoryview or type(buf.obj) is not zmq.Frame or buf.nbytes != array.nbytes
            or not array.flags.c_contiguous):
        return None
    return buf.obj


def drain_rest(sock):
    """Discard the remaining frames of a partly read message; returns how many there were."""
    n = 0
    while sock.getsockopt(zmq.RCVMORE):
        sock.recv(copy=False)
        n += 1
    return n


def poll(sockets, timeout):
    """Wait up to ``timeout`` seconds; returns the sockets with a message ready."""
    return Poller(sockets).poll(timeout)


class Poller:
    """``poll`` over a fixed set of sockets, registered once (the hot loops poll constantly)."""

    def __init__(self, sockets):
        self._poller = zmq.Poller()
        for s in sockets:
            self._poller.register(s, zmq.POLLIN)

    def poll(self, timeout):
        return [s for s, _ in self._poller.poll(max(0, int(timeout * 1000)))]


def readable(sock):
    """True when a whole message is waiting on ``sock`` (never waits)."""
    return bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)


class SendGuard:
    """Tracks zero-copy sends of arrays so their owner never overwrites bytes still in flight.
    A view (a member of a fusion group, a reshaped value) counts as its base array."""

    def __init__(self, timeout=60.0):
        self.timeout = timeout
        self._inflight = {}    # id(owning array) -> (array, [trackers])
        self._shared = {}      # id(owning array) -> weak reference: sent as a received frame

    def share(self, array):
        """``array``'s memory went out as a received frame (``received_frame``): zmq may read
        it until some unknown time, so it must never be written again."""
        owner = _owner(array)
        key = id(owner)
        if key not in self._shared:
            self._shared[key] = weakref.ref(owner, lambda _, key=key: self._shared.pop(key, None))

    def shared(self, array):
        ref = self._shared.get(id(_owner(array)))
        return ref is not None and ref() is not None

    def add(self, array, tracker):
        if tracker is None:
            return
        array = _owner(array)
        entry = self._inflight.setdefault(id(array), (array, []))
        entry[1].append(tracker)

    def busy(self, array):
        key = id(_owner(array))
        entry = self._inflight.get(key)
        if entry is None:
            return False
        entry[1][:] = [t for t in entry[1] if not t.done]
        if not entry[1]:
            del self._inflight[key]
            return False
        return True

    def wait(self, array):
        entry = self._inflight.pop(id(_owner(array)), None)
        if entry is None:
            return
        deadline = time.monotonic() + self.timeout
        for t in entry[1]:
            try:
                t.wait(max(0.0, deadline - time.monotonic()))
            except zmq.NotDone:
                raise PSTimeoutError(f"a reply of {entry[0].nbytes} bytes was not sent within "
                                     f"{self.timeout}s: the receiving peer stopped reading") from None

    def prune(self):
        for key in list(self._inflight):
            self.busy(self._inflight[key][0])


def _owner(array):
    """The numpy array whose memory ``array`` views (``array`` itself if it owns it)."""
    while isinstance(getattr(array, "base", None), np.ndarray):
        array = array.base
    return array
