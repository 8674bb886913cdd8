"""Network namespaces on one private bridge, each one a "host" with an ``eth0`` on the bridge
and, when asked, its own sshd: what ``netns.NetnsHosts`` builds its hosts from, and what tests
use directly when hosts need given names, addresses and authorized keys. Root only.

The bridge sits in a namespace of its own and nothing is added to the root namespace: clients
must run inside a host (``exec_prefix``), so no packet can take the root namespace's default
route off the machine. Every sshd gets its own UTS namespace (hostname = its namespace's name)
and dies by itself after ``lifetime`` seconds; ``close`` kills whatever still runs in the
namespaces and deletes them.
"""
import os
import signal
import subprocess
import time

SSHD = "/usr/sbin/sshd"
SSH_PORT = 2222
LINK = "eth0"


class NetnsError(RuntimeError):
    """Building the namespace hosts failed; the message names the step and the fix."""


def run(*args, timeout=20):
    """Run a command to its end; its stdout, or NetnsError naming the command and its stderr."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise NetnsError(f"`{' '.join(args)}` failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def keygen(path):
    """A new passphrase-less ed25519 key pair at ``path`` and ``path``.pub; returns ``path``."""
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path))
    return str(path)


def exec_prefix(ns):
    """Argv prefix running a command inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns]


def namespace_name(prefix, name):
    """The namespace of host ``name`` on the bridge whose names start with ``prefix``."""
    return f"{prefix}-{name}"


def _tbf(rate_bits):
    """``tc tbf`` arguments for ``rate_bits``: a bucket of at least 256 KiB (what checked out at
    1 Gbit/s) or 1 ms of traffic, so fast links are not held back by the bucket."""
    burst = max(256 * 1024, int(rate_bits / 8 / 1000))
    return ["tbf", "rate", f"{int(rate_bits)}bit", "burst", str(burst), "latency", "50ms"]


class NetnsBridge:
    """A bridge in namespace ``<prefix>-br`` (made here) and the hosts ``add_host`` puts on it.

    ``prefix`` must be unique to this run (carry a fresh id): every namespace is named from it.
    ``workdir`` (the caller's) receives the sshd host key, configs, pid files and logs.
    """

    def __init__(self, prefix, workdir, lifetime=600):
        self.prefix, self.dir, self.lifetime = prefix, str(workdir), lifetime
        self.name = namespace_name(prefix, "br")
        self.namespaces = []      # created so far, deleted by close()
        self.sshd = []            # (namespace, port, Popen) of every sshd started
        self._hostkey = None
        try:
            self._add_namespace(self.name)
            run("ip", "-n", self.name, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", self.name, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    exec_prefix = staticmethod(exec_prefix)

    def _add_namespace(self, ns):
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)

    def add_host(self, name, addr, prefixlen=24, rate_bits=None):
        """Namespace ``<prefix>-<name>`` with ``addr/prefixlen`` on its ``eth0``, whose peer is
        a port of the bridge; returns the namespace's name. With ``rate_bits``, both directions
        of the link are shaped by a token bucket (``tc tbf`` out of the host on its ``eth0``,
        into it on its bridge port): a full-duplex NIC of that rate."""
        ns, port = namespace_name(self.prefix, name), f"port{len(self.namespaces)}"
        self._add_namespace(ns)
        run("ip", "link", "add", LINK, "netns", ns, "type", "veth", "peer", "name", port,
            "netns", self.name)
        run("ip", "-n", self.name, "link", "set", port, "master", "br0")
        run("ip", "-n", self.name, "link", "set", port, "up")
        run("ip", "-n", ns, "addr", "add", f"{addr}/{prefixlen}", "dev", LINK)
        run("ip", "-n", ns, "link", "set", LINK, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        if rate_bits:
            run("tc", "-n", ns, "qdisc", "replace", "dev", LINK, "root", *_tbf(rate_bits))
            run("tc", "-n", self.name, "qdisc", "replace", "dev", port, "root", *_tbf(rate_bits))
        return ns

    def start_sshd(self, ns, addr, authorized_keys, port=SSH_PORT, accept_env=()):
        """sshd in ``ns`` on ``addr:port``: key-only root login with the keys in the file
        ``authorized_keys`` (read at each login, so it may be written later), taking the client
        variables named in ``accept_env``. It ends by itself after the bridge's lifetime;
        ``wait_sshd`` waits until it listens."""
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # its privilege-separation dir
        if self._hostkey is None:
            self._hostkey = keygen(os.path.join(self.dir, "hostkey"))
        conf = os.path.join(self.dir, f"sshd_{ns}.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(f"Port {port}\nListenAddress {addr}\nHostKey {self._hostkey}\n"
                    f"PidFile {self.dir}/sshd_{ns}.pid\nPermitRootLogin prohibit-password\n"
                    "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\n"
                    f"AuthorizedKeysFile {authorized_keys}\nStrictModes no\nUsePAM no\n"
                    "PrintMotd no\n" + "".join(f"AcceptEnv {e}\n" for e in accept_env))
        with open(self._sshd_log(ns), "w", encoding="utf-8") as log:
            self.sshd.append((ns, port, subprocess.Popen(
                [*exec_prefix(ns), "unshare", "--uts", "sh", "-c",
                 f"hostname {ns}; exec timeout {int(self.lifetime)} {SSHD} -D -e -f {conf}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)))

    def _sshd_log(self, ns):
        return os.path.join(self.dir, f"sshd_{ns}.log")

    def wait_sshd(self, timeout=15.0):
        """Return once every sshd started listens.

        Raises:
            NetnsError: one exited, or does not listen within ``timeout`` s (with its log).
        """
        deadline = time.monotonic() + timeout
        for ns, port, proc in self.sshd:
            while f":{port}" not in run(*exec_prefix(ns), "ss", "-ltn"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(self._sshd_log(ns), encoding="utf-8", errors="replace") as f:
                        raise NetnsError(f"sshd in {ns} is not listening on port {port} "
                                         f"after {timeout:g}s: {f.read()[-1000:]}")
                time.sleep(0.05)

    def check_on_link(self, ns, addrs):
        """From ``ns``, traffic to each of ``addrs`` stays on the bridge (or is ``ns``'s own
        address): the routing table is read, no packet is sent.

        Raises:
            NetnsError: a route goes through a gateway or another device.
        """
        for addr in addrs:
            route = run(*exec_prefix(ns), "ip", "route", "get", addr)
            if not route.startswith("local ") and (f"dev {LINK}" not in route or " via " in route):
                raise NetnsError(f"route from {ns} to {addr} leaves the bridge: {route}")

    def pids(self):
        """Pids of every process still running in one of the namespaces."""
        pids = set()
        for ns in self.namespaces:
            proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=20)
            pids.update(int(p) for p in proc.stdout.split() if p.isdigit())
        return pids - {os.getpid()}

    def close(self, grace=3.0):
        """Stop everything running in the namespaces (TERM, then KILL after ``grace`` s) and
        delete them, which removes their links. Safe to call more than once, and after a
        failed step."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                for _, _, p in self.sshd:
                    p.poll()           # reap ours, so they do not linger as zombies
                time.sleep(0.05)
        for _, _, p in self.sshd:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.sshd = []
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.namespaces = []
