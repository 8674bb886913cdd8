"""Parsing and formatting of ``tcp://host:port`` / ``ipc://`` / ``inproc://`` addresses, and
asking the OS for free ports (never a fixed port)."""
import secrets
import socket
import sys

from ..errors import ConfigError

SCHEMES = ("tcp", "ipc", "inproc")


def parse(address):
    """Split ``scheme://rest`` and validate; returns ``(scheme, host, port)`` (port None unless tcp).

    Raises:
        ConfigError: naming the address and the expected form.
    """
    scheme, sep, rest = str(address).partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise ConfigError(f"address {address!r} is not of the form tcp://host:port, ipc://path "
                          f"or inproc://name")
    if scheme != "tcp":
        return scheme, rest, None
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address {address!r} needs a host and a port 1..65535, e.g. tcp://10.0.0.1:9000")
    return scheme, host.strip("[]"), int(port)


def tcp(host, port):
    """Format a tcp address."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def new_local():
    """A fresh ``ipc://@name`` address: a Linux abstract unix socket. It leaves no file behind,
    vanishes with its process (even on kill -9) and is reachable only from the same machine and
    network namespace. None where the OS has no abstract sockets."""
    if not sys.platform.startswith("linux"):
        return None
    return f"ipc://@psframe-{secrets.token_hex(8)}"


def local_reachable(address, timeout=0.5):
    """True when the abstract unix socket ``address`` (from ``new_local``) accepts a connection
    from here, i.e. its process is on this machine, in this network namespace."""
    scheme, rest, _ = parse(address)
    if scheme != "ipc" or not rest.startswith("@") or not sys.platform.startswith("linux"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect("\0" + rest[1:])
        except OSError:
            return False
    return True


def free_port(host="127.0.0.1"):
    """A TCP port the OS says is free on ``host`` now. Callers that bind later must retry on
    EADDRINUSE (another process may take it in between); zmq's ``bind_to_random_port`` avoids
    the race where the binder is ours."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
