"""Per-job credentials: who a process is and how it proves it. Pure data, no sockets.

``psframe-launch`` generates one ``Credentials`` per process of a job (``generate``) and hands
each process its own, serialised (``to_text``) in the ``PSFRAME_CREDENTIALS`` variable, which
travels as the rest of the job environment does (ssh stdin, 0600 plan files). By hand, a
process may instead name a 0600 file holding the same text in ``PSFRAME_CREDENTIALS_FILE``.

Every process gets its **own** secret and the public half of everyone's, so a process can
prove only its own identity (``"worker:3"``, ``"server:0"``, ``"scheduler"``):

- ``curve``: a CURVE key pair per process; ``peers`` maps identity -> public key (z85).
  Clients also check the public key of the server they connect to.
- ``token``: a random token per process, sent in clear by ZeroMQ's PLAIN mechanism (user name =
  identity); ``peers`` maps identity -> sha256 of its token, so knowing the table does not let a
  process speak as another.
"""
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import stat

from ..errors import ConfigError

MECHANISMS = ("curve", "token", "none")
SCHEDULER = "scheduler"


@dataclasses.dataclass(frozen=True)
class Credentials:
    mechanism: str                 # "curve" | "token"
    identity: str                  # this process: "worker:3", "server:0", "scheduler"
    secret: str = dataclasses.field(repr=False)   # curve secret key (z85) or token (hex)
    public: str = ""               # curve public key (z85); "" for token
    peers: dict = dataclasses.field(default_factory=dict, repr=False)   # identity -> public/hash

    def public_of(self, identity):
        """The public key (curve) of ``identity``; ConfigError if the job has no such process."""
        try:
            return self.peers[identity]
        except KeyError:
            raise ConfigError(f"the job's credentials name no process {identity!r}; every "
                              f"process needs credentials generated for the same job") from None

    def verify_token(self, identity, token):
        """True when ``token`` is ``identity``'s own token (constant-time compare)."""
        expected = self.peers.get(identity)
        return expected is not None and hmac.compare_digest(expected, token_digest(token))

    def identity_of_key(self, public):
        """The identity whose CURVE public key is ``public`` (z85), or None."""
        return self._by_key().get(public)

    def _by_key(self):
        table = self.__dict__.get("_key_index")
        if table is None:
            table = {v: k for k, v in self.peers.items()}
            object.__setattr__(self, "_key_index", table)
        return table

    def to_text(self):
        return json.dumps({"mechanism": self.mechanism, "identity": self.identity,
                           "secret": self.secret, "public": self.public, "peers": self.peers},
                          separators=(",", ":"), sort_keys=True)


def token_digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def identities(num_workers, num_servers, extra=()):
    """Every identity of a job: the scheduler, servers, workers (and any ``extra`` roles)."""
    return [SCHEDULER, *(f"server:{s}" for s in range(num_servers)),
            *(f"worker:{w}" for w in range(num_workers)), *extra]


def generate(mechanism, names):
    """Fresh credentials for a job: ``{identity: Credentials}`` for each of ``names``.

    Raises:
        ConfigError: an unknown mechanism, or CURVE without libzmq's CURVE support.
    """
    if mechanism == "curve":
        import zmq
        if not zmq.has("curve"):
            raise ConfigError("--security curve: this libzmq was built without CURVE; install "
                              "pyzmq's wheel (it bundles libsodium) or use --security token")
        pairs = {n: tuple(k.decode() for k in zmq.curve_keypair()) for n in names}
        peers = {n: pub for n, (pub, _) in pairs.items()}
        return {n: Credentials("curve", n, sec, pub, peers) for n, (pub, sec) in pairs.items()}
    if mechanism == "token":
        tokens = {n: secrets.token_hex(32) for n in names}
        peers = {n: token_digest(t) for n, t in tokens.items()}
        return {n: Credentials("token", n, t, "", peers) for n, t in tokens.items()}
    raise ConfigError(f"security mechanism {mechanism!r} is unknown; use one of "
                      f"{', '.join(MECHANISMS)}")


def from_text(text, where="PSFRAME_CREDENTIALS"):
    """Parse ``to_text`` output.

    Raises:
        ConfigError: naming ``where`` when the text is not credentials of this format.
    """
    try:
        raw = json.loads(text)
        creds = Credentials(raw["mechanism"], raw["identity"], raw["secret"], raw.get("public", ""),
                            dict(raw["peers"]))
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{where} does not hold psframe credentials; generate them with "
                          f"psframe-launch or `python -m psframe_launcher.credentials`") from None
    if creds.mechanism not in ("curve", "token") or not all(
            type(v) is str for v in (creds.identity, creds.secret, creds.public, *creds.peers.values())):
        raise ConfigError(f"{where} holds malformed credentials (mechanism {creds.mechanism!r})")
    return creds


def read_file(path):
    """Credentials from a file only its owner may read (as ssh insists for private keys).

    Raises:
        ConfigError: the file is missing, readable by group/others, or malformed.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"PSFRAME_CREDENTIALS_FILE={path!r}: {exc.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"PSFRAME_CREDENTIALS_FILE={path!r} is readable by others (mode "
                              f"{stat.S_IMODE(mode):o}); chmod 600 it")
        return from_text(f.read(), f"PSFRAME_CREDENTIALS_FILE={path!r}")


def write_file(path, creds):
    """Write ``creds`` to a new 0600 file (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(creds.to_text())
