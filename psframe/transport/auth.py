"""Authentication of every connection through ZeroMQ's ZAP (RFC 27), and the identity a
received message was sent under.

A ``Security`` is built once per process from its credentials (``credentials.py``):

- ``bind(sock)`` before a ROUTER binds: the socket becomes a CURVE or PLAIN server and asks this
  process's ZAP handler about every new connection;
- ``connect(sock, peer)`` before a DEALER connects to ``peer`` (``"server:0"``, ``"scheduler"``):
  the socket proves this process's identity (and, with CURVE, checks the peer's public key);
- ``sender(frame)``: the identity the connection a frame came through authenticated as (zmq's
  ``User-Id`` message property); with security ``none``, None (nothing is known).

The ZAP handler (``ZapHandler``) answers ZeroMQ's questions from a thread: a CURVE key is
accepted only if it is one of the job's, and is given that process's identity as its User-Id;
a PLAIN user name must be one of the job's identities with that process's own token.
"""
import functools
import logging
import threading

import zmq
from zmq.utils import z85

from ..errors import ConfigError
from . import credentials

logger = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = "psframe"


class Security:
    """How this process's sockets authenticate (see module docstring)."""

    def __init__(self, creds=None, max_message_bytes=-1):
        self.creds = creds
        self.max_message_bytes = max_message_bytes
        self.mechanism = creds.mechanism if creds is not None else "none"
        self._handlers = {}

    @property
    def identity(self):
        return self.creds.identity if self.creds is not None else None

    def bind(self, sock):
        """Make ``sock`` (before ``bind``) authenticate every peer through the ZAP handler of
        its context (started here on first use)."""
        sock.maxmsgsize = self.max_message_bytes
        if self.creds is None:
            return
        ctx = sock.context
        if id(ctx) not in self._handlers:
            handler = ZapHandler(ctx, self.creds)
            handler.start()
            self._handlers[id(ctx)] = handler
        sock.zap_domain = DOMAIN.encode()
        if self.mechanism == "curve":
            sock.curve_secretkey = self.creds.secret.encode()
            sock.curve_publickey = self.creds.public.encode()
            sock.curve_server = True
        else:
            sock.plain_server = True

    def connect(self, sock, peer):
        """Make ``sock`` (before ``connect``) prove this process's identity to ``peer``."""
        sock.maxmsgsize = self.max_message_bytes
        if self.creds is None:
            return
        if self.mechanism == "curve":
            sock.curve_secretkey = self.creds.secret.encode()
            sock.curve_publickey = self.creds.public.encode()
            sock.curve_serverkey = self.creds.public_of(peer).encode()
        else:
            sock.plain_username = self.creds.identity.encode()
            sock.plain_password = self.creds.secret.encode()

    def sender(self, frame):
        """The authenticated identity of the connection ``frame`` arrived on, or None when this
        process runs without security."""
        if self.creds is None:
            return None
        return frame.get("User-Id")

    def close(self):
        for handler in self._handlers.values():
            handler.stop()
        self._handlers = {}


class ZapHandler(threading.Thread):
    """Answers ZAP requests of one context. Refusals are logged once per peer address and
    reason (zmq retries a refused connection every reconnect interval)."""

    def __init__(self, ctx, creds):
        super().__init__(name="psframe-zap", daemon=True)
        self.creds = creds
        self._logged = set()
        self._stop_evt = threading.Event()
        self._sock = ctx.socket(zmq.REP)
        self._sock.linger = 0
        self._sock.bind(ZAP_ENDPOINT)

    def stop(self):
        self._stop_evt.set()
        self.join(timeout=2.0)

    def run(self):
        try:
            while not self._stop_evt.is_set():
                if self._sock.poll(100):
                    self._answer(self._sock.recv_multipart())
        except zmq.ContextTerminated:
            pass
        finally:
            self._sock.close(0)

    def _answer(self, request):
        if len(request) < 6:
            self._sock.send_multipart([b"1.0", b"", b"500", b"malformed ZAP request", b"", b""])
            return
        version, request_id, _domain, address, _routing, mechanism = request[:6]
        user, why = self.check(mechanism, request[6:])
        if user is None:
            where = address.decode(errors="replace")
            if (where, why) not in self._logged and len(self._logged) < 1000:
                self._logged.add((where, why))
                logger.warning("refused a connection from %s: %s", where or "a local socket", why)
            reply = [version, request_id, b"400", why.encode(), b"", b""]
        else:
            reply = [version, request_id, b"200", b"OK", user.encode(), b""]
        self._sock.send_multipart(reply)

    def check(self, mechanism, parts):
        """``(identity, "")`` for credentials of this job, else ``(None, reason)``."""
        if mechanism == b"CURVE" and self.creds.mechanism == "curve" and len(parts) == 1:
            key = z85.encode(parts[0]).decode()
            user = self.creds.identity_of_key(key)
            return (user, "") if user else (None, "CURVE key is not one of this job's")
        if mechanism == b"PLAIN" and self.creds.mechanism == "token" and len(parts) == 2:
            name, token = (p.decode(errors="replace") for p in parts)
            if self.creds.verify_token(name, token):
                return name, ""
            return None, "token is not this job's token for that identity"
        return None, f"mechanism {mechanism.decode(errors='replace')} is not this job's " \
                     f"({self.creds.mechanism})"


@functools.lru_cache(maxsize=8)
def for_config(config):
    """The one ``Security`` of a process with ``config`` (``from_config``, made once)."""
    return from_config(config)


def from_config(config):
    """The ``Security`` of this process, from its configuration (``PSFRAME_SECURITY``,
    ``PSFRAME_CREDENTIALS`` or ``PSFRAME_CREDENTIALS_FILE``).

    Raises:
        ConfigError: unreadable or malformed credentials, or a mechanism other than the one
            ``PSFRAME_SECURITY`` names.
    """
    raw, limit = config.credentials, config.max_message_bytes
    if raw is None:
        return Security(None, limit)
    if isinstance(raw, tuple):
        creds = credentials.read_file(raw[1])
    else:
        creds = credentials.from_text(raw)
    if config.security not in ("auto", creds.mechanism):
        raise ConfigError(f"PSFRAME_SECURITY={config.security} but the credentials are for "
                          f"{creds.mechanism}; generate credentials for {config.security}")
    return Security(creds, limit)



_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class HandshakeWatch:
    """Counts the connections a bound socket refused (no credentials, another job's, a wrong
    mechanism: every failed handshake, whether ZAP or the mechanism itself said no), from the
    socket's monitor. ``poll()`` never waits; the service calls it from its loop."""

    def __init__(self, sock):
        self.refused = 0
        self._mon = sock.get_monitor_socket(_FAILED)
        self._logged = set()

    def poll(self):
        while self._mon.poll(0):
            frames = self._mon.recv_multipart()
            if len(frames) != 2:
                continue
            self.refused += 1
            where = frames[1].decode(errors="replace")
            if where not in self._logged and len(self._logged) < 100:
                self._logged.add(where)
                logger.warning("refused a connection to %s: the peer did not present this job's "
                               "credentials (further refusals there are only counted)", where)
        return self.refused

    def close(self):
        self._mon.close(0)
