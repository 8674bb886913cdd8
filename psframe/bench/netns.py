"""Hosts made of Linux network namespaces on this machine, for multi-host runs without a cluster
(``psframe-bench --hosts-netns``, the ssh launcher tests). Root only.

``NetnsHosts`` puts N hosts on one private bridge (``netns_bridge``): each has its own hostname
(a UTS namespace around its sshd), an ``eth0`` on the bridge, and an sshd that accepts one
generated key. With a ``rate``, both directions of every host's link are shaped by a token
bucket, so each host has a full-duplex NIC of that rate. Nothing is added to the root namespace:
clients must run inside a host (``exec_prefix``). Every name carries a per-run id, sshd dies by
itself after ``lifetime`` seconds, and ``close`` kills whatever still runs in the namespaces and
deletes them.
"""
import os
import re
import shutil
import tempfile
import uuid

from .netns_bridge import (LINK, SSH_PORT, SSHD, NetnsBridge, NetnsError, exec_prefix, keygen,
                           namespace_name)

_UNITS = {"bit": 1, "kbit": 10 ** 3, "mbit": 10 ** 6, "gbit": 10 ** 9, "tbit": 10 ** 12}


def parse_rate(text):
    """tc's rate spelling -> bits per second: ``'1gbit'`` -> 1e9, ``'500mbit'`` -> 5e8.

    Raises:
        ValueError: not a rate in bits (tc's ``mbps`` means megaBYTES/s: spell bits out).
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?bit)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"link rate {text!r}: give a positive rate in bits per second as tc "
                         f"spells it, e.g. 100mbit, 1gbit, 10gbit")
    return float(m.group(1)) * _UNITS[m.group(2)]


def missing_requirements():
    """What this machine lacks to build namespace hosts (empty when nothing), each with its fix."""
    out = []
    if os.geteuid() != 0:
        out.append("root (network namespaces and tc need it): run as root")
    for exe, package in (("ip", "iproute2"), ("tc", "iproute2"), ("ss", "iproute2"),
                         ("unshare", "util-linux"), ("ssh", "openssh-client"),
                         ("ssh-keygen", "openssh-client")):
        if shutil.which(exe) is None:
            out.append(f"{exe} (apt-get install {package})")
    if not os.path.exists(SSHD):
        out.append(f"{SSHD} (apt-get install openssh-server)")
    return out


def interface_bytes(name=LINK):
    """``(received, sent)`` bytes of interface ``name`` in the calling process's network
    namespace, from ``/proc/net/dev`` (which shows the reader's namespace).

    Raises:
        OSError: no such interface here.
    """
    with open("/proc/net/dev", encoding="ascii") as f:
        found = _netdev_counters(f.read(), name)
    if found is None:
        raise OSError(f"no interface {name!r} in /proc/net/dev of this network namespace")
    return found


def _netdev_counters(text, name):
    """``(received, sent)`` bytes of ``name`` in the text of a ``/proc/net/dev``, or None."""
    for line in text.splitlines():
        iface, _, counters = line.partition(":")
        if counters and iface.strip() == name:
            fields = counters.split()
            return int(fields[0]), int(fields[8])
    return None


class NetnsHosts:
    """``count`` namespace hosts at ``{subnet}.11``, ``.12``, ... with sshd on port 2222.

    Use as a context manager (or call ``up`` then ``close``). ``workdir`` (made and removed
    here when not given) holds the keys, sshd configs and logs, and the hostfile (``slots``
    per host) that ``psframe-launch -H`` reads; ``launch_args`` are the launcher's ssh flags.
    """

    def __init__(self, count, rate_bits=None, slots=2, workdir=None, lifetime=600,
                 subnet="10.200.0", prefix="psf"):
        if count < 1:
            raise ValueError(f"need at least one host, got {count}")
        self.prefix = f"{prefix}{uuid.uuid4().hex[:6]}"      # the per-run id in every name
        self.names = [namespace_name(self.prefix, f"h{i + 1}") for i in range(count)]
        self.bridge = namespace_name(self.prefix, "br")
        self.addresses = [f"{subnet}.{11 + i}" for i in range(count)]
        self.subnet = f"{subnet}.0/24"
        self.rate_bits, self.slots, self.lifetime = rate_bits, slots, lifetime
        self._own_dir = workdir is None
        self.dir = str(workdir) if workdir else None
        self.net = None           # the NetnsBridge, once up() made it

    @property
    def identity(self):
        return os.path.join(self.dir, "id_ed25519")

    @property
    def hostfile(self):
        return os.path.join(self.dir, "hostfile")

    @property
    def launch_args(self):
        """``psframe-launch`` flags that reach these hosts' sshd."""
        return ["--ssh-port", str(SSH_PORT), "--ssh-identity", self.identity,
                "--ssh-option", "StrictHostKeyChecking=no",
                "--ssh-option", "UserKnownHostsFile=/dev/null", "--ssh-option", "LogLevel=ERROR"]

    def exec_prefix(self, index):
        """Argv prefix running a command inside host ``index``'s namespace."""
        return exec_prefix(self.names[index])

    def up(self, timeout=15.0):
        """Create the namespaces, links, shaping and sshd; returns once every sshd listens.

        Raises:
            NetnsError: a requirement is missing or a step failed (``close`` still cleans up).
        """
        missing = missing_requirements()
        if missing:
            raise NetnsError("namespace hosts need " + "; ".join(missing))
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="psframe-netns-")
        keys = os.path.join(self.dir, "authorized_keys")
        shutil.copyfile(keygen(self.identity) + ".pub", keys)
        os.chmod(keys, 0o600)
        self.net = NetnsBridge(self.prefix, self.dir, self.lifetime)
        for i, addr in enumerate(self.addresses):
            ns = self.net.add_host(f"h{i + 1}", addr, rate_bits=self.rate_bits)
            self.net.start_sshd(ns, addr, keys)
        with open(self.hostfile, "w", encoding="utf-8") as f:
            f.write("".join(f"{a} slots={self.slots}\n" for a in self.addresses))
        self.net.wait_sshd(timeout)
        self.net.check_on_link(self.names[0], self.addresses[1:])   # host to host on the bridge
        return self

    def close(self, grace=3.0):
        """Stop everything running in the namespaces (TERM, then KILL after ``grace`` s), delete
        them (which removes their links) and the work directory if it was made here. Safe to
        call more than once, and after a failed ``up``."""
        if self.net is not None:
            self.net.close(grace)
            self.net = None
        if self._own_dir and self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        try:
            return self.up()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()
