"""Talking to the scheduler from any node: requests and registration. The heartbeat and
abort watch is ``link.SchedulerLink`` (a worker's runs in ``HeartbeatThread``, named here too)."""
import socket
import time

from ..errors import JobAbortedError, PSTimeoutError, from_body
from ..protocol import Command, codec
from . import addresses, sockets
from .link import HeartbeatThread, SchedulerLink

__all__ = ["bind_ip", "request", "register", "HeartbeatThread", "SchedulerLink"]


def bind_ip(host):
    """The address to bind for ``host`` (a name resolves to its IP; unresolvable: all)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "*"


def request(sock, cmd, sender, timeout, what, body=None, msg_id=1, check=None):
    """Send one request on a DEALER and wait for its reply; returns the reply body. ``check``
    (called at least every second) raises once waiting is pointless; ``timeout`` None: wait as
    long as it does not.

    Raises:
        PSTimeoutError: no reply within ``timeout`` (names ``what``).
        JobAbortedError: the scheduler aborted the job (carries its reason).
        PSError subclass: the peer's error reply, or ``check``'s error.
    """
    sockets.send_frames(sock, codec.encode(cmd, msg_id, sender, body=body))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        left = 1.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise PSTimeoutError(f"{what}: no answer within {timeout:g}s")
        if not sockets.poll([sock], min(left, 1.0) if check is not None else left):
            continue
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
