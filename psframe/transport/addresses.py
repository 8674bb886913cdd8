"""Parsing and formatting of ``tcp://host:port`` / ``ipc://`` / ``inproc://`` addresses, and
asking the OS for free ports (never a fixed port)."""
import os
import shutil
import socket
import stat
import sys
import tempfile

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
    """A fresh ``ipc://`` address for a unix socket in a new directory only this user may enter
    (0700), so no other local user can even connect to it; the directory's name carries this
    network namespace (``local_reachable``). None where the OS has no unix sockets for zmq."""
    if not sys.platform.startswith("linux"):
        return None
    directory = tempfile.mkdtemp(prefix=f"psframe-{_netns()}-")
    return f"ipc://{directory}/sock"


def remove_local(address):
    """Remove the directory of a ``new_local`` address (its socket goes with it)."""
    path = address.partition("://")[2]
    directory = os.path.dirname(path)
    if os.path.basename(directory).startswith("psframe-"):
        shutil.rmtree(directory, ignore_errors=True)


def local_reachable(address):
    """True when the unix socket ``address`` (from ``new_local``) was made in this network
    namespace on this machine and is still there (its server removes it when it ends)."""
    scheme, path, _ = parse(address)
    if scheme != "ipc" or not sys.platform.startswith("linux"):
        return False
    if not os.path.basename(os.path.dirname(path)).startswith(f"psframe-{_netns()}-"):
        return False
    try:     # not a test connection: the server would count it as a refused handshake
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _netns():
    """This process's network namespace (its inode), as a short tag."""
    try:
        return f"n{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return "n0"


def free_port(host="127.0.0.1"):
    """A TCP port the OS says is free on ``host`` now. Callers that bind later must retry on
    EADDRINUSE (another process may take it in between); zmq's ``bind_to_random_port`` avoids
    the race where the binder is ours."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
