"""Hosts made of Linux network namespaces on this machine, for multi-host runs without a cluster
(``psframe-bench --hosts-netns``, the ssh launcher tests). Root only.

Each host is a namespace with its own hostname (a UTS namespace around its sshd), an ``eth0``
whose peer sits on a bridge in a private namespace, and an sshd that accepts one generated key.
With a ``rate``, both directions of every host's link are shaped by a token bucket (``tc tbf``
on ``eth0`` and on its bridge port), so each host has a full-duplex NIC of that rate. Nothing is
added to the root namespace: clients must run inside a host (``exec_prefix``), so no packet can
take the root namespace's default route off the machine. Every name carries a per-run id, sshd
dies by itself after ``lifetime`` seconds, and ``close`` kills whatever still runs in the
namespaces and deletes them.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

SSH_PORT = 2222
SSHD = "/usr/sbin/sshd"
LINK = "eth0"
_UNITS = {"bit": 1, "kbit": 10 ** 3, "mbit": 10 ** 6, "gbit": 10 ** 9, "tbit": 10 ** 12}


class NetnsError(RuntimeError):
    """Building the namespace hosts failed; the message names the step and the fix."""


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


def _run(*args, timeout=20):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise NetnsError(f"`{' '.join(args)}` failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _tbf(rate_bits):
    """``tc tbf`` arguments for ``rate_bits``: a bucket of at least 256 KiB (what checked out at
    1 Gbit/s) or 1 ms of traffic, so fast links are not held back by the bucket."""
    burst = max(256 * 1024, int(rate_bits / 8 / 1000))
    return ["tbf", "rate", f"{int(rate_bits)}bit", "burst", str(burst), "latency", "50ms"]


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
        run_id = uuid.uuid4().hex[:6]
        self.names = [f"{prefix}{run_id}-h{i + 1}" for i in range(count)]
        self.bridge = f"{prefix}{run_id}-br"
        self.addresses = [f"{subnet}.{11 + i}" for i in range(count)]
        self.subnet = f"{subnet}.0/24"
        self.rate_bits, self.slots, self.lifetime = rate_bits, slots, lifetime
        self._own_dir = workdir is None
        self.dir = str(workdir) if workdir else None
        self.sshd = []
        self.made = []          # namespaces created so far, deleted by close()

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
        return ["ip", "netns", "exec", self.names[index]]

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
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege-separation dir
        for key in ("hostkey", "id_ed25519"):
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(self.dir, key))
        keys = os.path.join(self.dir, "authorized_keys")
        shutil.copyfile(self.identity + ".pub", keys)
        os.chmod(keys, 0o600)
        self._add_namespace(self.bridge)
        _run("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.bridge, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.names, self.addresses)):
            self._add_host(i, ns, addr)
        with open(self.hostfile, "w", encoding="utf-8") as f:
            f.write("".join(f"{a} slots={self.slots}\n" for a in self.addresses))
        self._wait_listening(timeout)
        for addr in self.addresses[1:]:      # traffic between hosts stays on the bridge
            route = _run(*self.exec_prefix(0), "ip", "route", "get", addr)
            if f"dev {LINK}" not in route or " via " in route:
                raise NetnsError(f"route from {self.names[0]} to {addr} leaves the bridge: {route}")
        return self

    def _add_namespace(self, ns):
        _run("ip", "netns", "add", ns)
        self.made.append(ns)

    def _add_host(self, i, ns, addr):
        self._add_namespace(ns)
        port = f"port{i + 1}"
        _run("ip", "link", "add", f"veth{i + 1}", "netns", ns, "type", "veth", "peer", "name", port,
             "netns", self.bridge)
        _run("ip", "-n", self.bridge, "link", "set", port, "master", "br0")
        _run("ip", "-n", self.bridge, "link", "set", port, "up")
        _run("ip", "-n", ns, "link", "set", f"veth{i + 1}", "name", LINK)
        _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", LINK)
        _run("ip", "-n", ns, "link", "set", LINK, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        if self.rate_bits:
            # out of the host on its eth0, into it on its bridge port: a full-duplex NIC
            _run("tc", "-n", ns, "qdisc", "replace", "dev", LINK, "root", *_tbf(self.rate_bits))
            _run("tc", "-n", self.bridge, "qdisc", "replace", "dev", port, "root", *_tbf(self.rate_bits))
        conf = os.path.join(self.dir, f"sshd_{ns}.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(f"Port {SSH_PORT}\nListenAddress {addr}\nHostKey {self.dir}/hostkey\n"
                    f"PidFile {self.dir}/sshd_{ns}.pid\nPermitRootLogin prohibit-password\n"
                    "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\n"
                    f"AuthorizedKeysFile {self.dir}/authorized_keys\nStrictModes no\nUsePAM no\n"
                    "PrintMotd no\n")
        with open(os.path.join(self.dir, f"sshd_{ns}.log"), "w") as log:
            self.sshd.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
                 f"hostname {ns}; exec timeout {int(self.lifetime)} {SSHD} -D -e -f {conf}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        for i, (ns, proc) in enumerate(zip(self.names, self.sshd)):
            while f":{SSH_PORT}" not in _run(*self.exec_prefix(i), "ss", "-ltn"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(os.path.join(self.dir, f"sshd_{ns}.log")) as f:
                        raise NetnsError(f"sshd in {ns} is not listening on port {SSH_PORT} "
                                         f"after {timeout:g}s: {f.read()[-1000:]}")
                time.sleep(0.05)

    def link_bytes(self, index):
        """``(received, sent)`` bytes of host ``index``'s link so far."""
        found = _netdev_counters(_run(*self.exec_prefix(index), "cat", "/proc/net/dev"), LINK)
        if found is None:
            raise NetnsError(f"no {LINK} in {self.names[index]}")
        return found

    def pids(self):
        """Pids of every process still running in one of the namespaces."""
        pids = set()
        for ns in self.made:
            proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=20)
            pids.update(int(p) for p in proc.stdout.split() if p.isdigit())
        return pids - {os.getpid()}

    def close(self, grace=3.0):
        """Stop everything running in the namespaces (TERM, then KILL after ``grace`` s), delete
        them (which removes their links) and the work directory if it was made here. Safe to
        call more than once, and after a failed ``up``."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                for p in self.sshd:
                    p.poll()           # reap ours, so they do not linger as zombies
                time.sleep(0.05)
        for p in self.sshd:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.sshd = []
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.made = []
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
