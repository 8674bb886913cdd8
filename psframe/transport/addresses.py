"""Parsing and formatting of ``tcp://host:port`` / ``ipc://`` / ``inproc://`` addresses, and
asking the OS for free ports (never a fixed port)."""
import socket

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


def free_port(host="127.0.0.1"):
    """A TCP port the OS says is free on ``host`` now. Callers that bind later must retry on
    EADDRINUSE (another process may take it in between); zmq's ``bind_to_random_port`` avoids
    the race where the binder is ours."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
