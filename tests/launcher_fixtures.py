"""Helpers for the launcher's integration tests: running ``psframe-launch`` with a deadline,
finding (and, on failure, killing) every process a test's job started by a tag in its
environment, and watching argvs for secrets."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "bin")
WORKER = os.path.join(BIN, "launch_sum_worker.py")
VENV_BIN = os.path.dirname(sys.executable)
LAUNCH = os.path.join(VENV_BIN, "psframe-launch")
TAG_VAR = "PSF_LAUNCH_TEST_TAG"


def new_tag():
    return uuid.uuid4().hex[:16]


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def tagged_pids(tag):
    """Pids of live processes (any namespace: pids are shared) whose environment has the tag."""
    needle = f"{TAG_VAR}={tag}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            if needle in _read(f"/proc/{d}/environ").split(b"\0"):
                stat = _read(f"/proc/{d}/stat").decode(errors="replace")
                if stat and stat.rsplit(")", 1)[-1].split()[0] != "Z":
                    pids.append(int(d))
    return pids


def pids_with_env(tag, **want):
    """Tagged pids whose environment also has every NAME=VALUE of ``want``."""
    out = []
    for pid in tagged_pids(tag):
        env = dict(item.split(b"=", 1) for item in _read(f"/proc/{pid}/environ").split(b"\0")
                   if b"=" in item)
        if all(env.get(k.encode()) == str(v).encode() for k, v in want.items()):
            out.append(pid)
    return out


def cmdline_pids(pattern):
    rx = re.compile(pattern.encode())
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid()
            and rx.search(_read(f"/proc/{d}/cmdline").replace(b"\0", b" "))]


def kill_tagged(tag):
    for pid in tagged_pids(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def assert_none_left(tag, within=5.0):
    """Every process of the tagged job is gone (waits up to ``within`` s for the kernel to
    finish tearing down); kills leftovers so one failure does not poison later tests."""
    deadline = time.monotonic() + within
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = tagged_pids(tag)
    if left:
        desc = [_read(f"/proc/{p}/cmdline").replace(b"\0", b" ").decode(errors="replace") for p in left]
        kill_tagged(tag)
        raise AssertionError(f"processes left running: {list(zip(left, desc))}")


HELPERS = r"psframe_launcher\.agent|orted"


def assert_every_role_ran(job, host, workers=3):
    """Every worker printed ``DONE``, and the scheduler and server 1 spoke, all from ``host``."""
    for rank in range(workers):
        assert f"[worker {rank}@{host}] DONE rank={rank}" in job.lines, job.text()
    assert any(l.startswith(f"[scheduler@{host}]") for l in job.lines)
    assert any(l.startswith(f"[server 1@{host}]") for l in job.lines)


def assert_no_helpers_left(job):
    """No launcher agent (or Open MPI orted) started during ``job`` is still running."""
    left = set(cmdline_pids(HELPERS)) - job.foreign
    assert not left, f"agents left running: {sorted(left)}"


class Launch:
    """``psframe-launch ARGS`` running in the background, output collected, with a deadline.

    ``prefix`` wraps the command (e.g. ``ip netns exec NS``)."""

    def __init__(self, args, tag, timeout=60, prefix=(), cwd=None, env=None):
        self.tag = tag
        # agents/orted carry no tag: remember which already ran (another job on the machine)
        self.foreign = set(cmdline_pids(HELPERS))
        full_env = dict(os.environ if env is None else env)
        full_env[TAG_VAR] = tag
        cmd = [*prefix, "timeout", "-s", "KILL", str(timeout), LAUNCH,
               "--env", f"{TAG_VAR}={tag}", *args]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=cwd, env=full_env, start_new_session=True)
        self.lines, self.err_lines = [], []
        self._events = []
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._read, args=(s, l), daemon=True)
                         for s, l in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err_lines))]
        for t in self._threads:
            t.start()

    def _read(self, stream, lines):
        for raw in iter(stream.readline, b""):
            with self._cond:
                lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()

    def wait_for_line(self, pattern, timeout=30):
        """The first stdout line matching ``pattern`` (regex), waiting up to ``timeout`` s."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._more():
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n"
                                         + self.text())
                self._cond.wait(min(left, 0.2))

    def _more(self):
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout=60):
        """Exit code and seconds from start to exit."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"psframe-launch did not end within {timeout}s:\n{self.text()}")
        elapsed = time.monotonic() - self.started
        for t in self._threads:
            t.join(timeout=5)
        return rc, elapsed

    def text(self):
        return "\n".join(self.lines) + "\n--- stderr ---\n" + "\n".join(self.err_lines)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        kill_tagged(self.tag)


class ArgvWatcher:
    """Scans every process's argv for ``secret`` while running; ``seen`` lists offenders."""

    def __init__(self, secret):
        self.secret = secret.encode()
        self.seen = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            for d in os.listdir("/proc"):
                if d.isdigit():
                    cmd = _read(f"/proc/{d}/cmdline")
                    if self.secret in cmd:
                        self.seen.append((int(d), cmd.replace(b"\0", b" ").decode(errors="replace")))
            self.scans += 1
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def check_fails_fast(job, trigger_line, expect_rc, root_cause, act=None, within=10.0):
    """The fail-fast contract, shared by every backend's tests.

    Waits for ``trigger_line`` (a regex of the job's output), runs ``act()`` (e.g. a kill -9;
    nothing for a worker that exits on purpose), then checks that the launcher exits with
    ``expect_rc`` within ``within`` seconds, that its report names ``root_cause`` (a regex, or
    a callable giving one once ``act`` ran) as the root cause, and that no process of the job
    is left. Returns the seconds it took.
    """
    try:
        job.wait_for_line(trigger_line, 60)
        if act is not None:
            act()
        started = time.monotonic()
        rc, _ = job.wait(60)
        took = time.monotonic() - started
    finally:
        job.stop()
    assert rc == expect_rc, job.text()
    assert took < within, took
    report = "\n".join(job.err_lines)
    if callable(root_cause):
        root_cause = root_cause()
    assert re.search(r"ROOT CAUSE: " + root_cause, report), report
    assert_none_left(job.tag)
    assert_no_helpers_left(job)
    return took


def kill_9(tag, **env):
    """An ``act`` for check_fails_fast: SIGKILL the one process of the job with ``env``
    (its pid is kept in ``act.pid`` for the report check)."""
    def act():
        pid, = pids_with_env(tag, **env)
        act.pid = pid
        os.kill(pid, signal.SIGKILL)
    return act


# --- test hosts: network namespaces on a private bridge, each optionally with its own sshd ----

SSHD = "/usr/sbin/sshd"


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def keygen(path):
    """A new passphrase-less ed25519 key pair at ``path`` / ``path``.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=20)
    return str(path)


class NetnsHosts:
    """Test "hosts": network namespaces named ``<prefix>-<name>``, each with an ``eth0`` on one
    bridge that lives in its own namespace. Nothing is added to the root namespace, so every
    client must run inside a host (``exec_prefix``). sshd processes get a bounded lifetime and
    their own UTS namespace (hostname = namespace name); ``close`` stops them and deletes every
    namespace."""

    def __init__(self, workdir, prefix, lifetime=300):
        self.dir, self.prefix, self.lifetime = str(workdir), prefix, lifetime
        self.bridge = f"{prefix}-br"
        self.namespaces, self.sshd = [], []
        self.hostkey = None
        ip("netns", "add", self.bridge)
        self.namespaces.append(self.bridge)
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")

    def add_host(self, name, addr, prefixlen=24):
        """A namespace with ``addr`` on ``eth0``; returns its name."""
        ns, port = f"{self.prefix}-{name}", f"port{len(self.namespaces)}"
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("link", "add", "veth0", "netns", ns, "type", "veth", "peer", "name", port,
           "netns", self.bridge)
        ip("-n", self.bridge, "link", "set", port, "master", "br0")
        ip("-n", self.bridge, "link", "set", port, "up")
        ip("-n", ns, "link", "set", "veth0", "name", "eth0")
        ip("-n", ns, "addr", "add", f"{addr}/{prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    @staticmethod
    def exec_prefix(ns):
        return ("ip", "netns", "exec", ns)

    def start_sshd(self, ns, addr, authorized_keys, port=2222, accept_env=()):
        """sshd in ``ns`` on ``addr:port``, key-only root login with ``authorized_keys``."""
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        if self.hostkey is None:
            self.hostkey = keygen(os.path.join(self.dir, "hostkey"))
        conf = os.path.join(self.dir, f"sshd_{ns}.conf")
        with open(conf, "w") as f:
            f.write(f"Port {port}\nListenAddress {addr}\nHostKey {self.hostkey}\n"
                    f"PidFile {self.dir}/sshd_{ns}.pid\nPermitRootLogin prohibit-password\n"
                    "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\n"
                    f"AuthorizedKeysFile {authorized_keys}\nStrictModes no\nUsePAM no\n"
                    "PrintMotd no\n" + "".join(f"AcceptEnv {e}\n" for e in accept_env))
        with open(os.path.join(self.dir, f"sshd_{ns}.log"), "w") as log:
            self.sshd.append((ns, port, subprocess.Popen(
                [*self.exec_prefix(ns), "unshare", "--uts", "sh", "-c",
                 f"hostname {ns}; exec timeout {self.lifetime} {SSHD} -D -e -f {conf}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)))

    def wait_sshd(self, timeout=10):
        deadline = time.monotonic() + timeout
        for ns, port, _ in self.sshd:
            while f":{port}" not in ip("netns", "exec", ns, "ss", "-ltn").stdout:
                if time.monotonic() > deadline:
                    with open(os.path.join(self.dir, f"sshd_{ns}.log")) as f:
                        raise AssertionError(f"sshd in {ns} not listening: {f.read()}")
                time.sleep(0.05)

    def assert_on_link(self, ns, addrs):
        """The rule above all: from ``ns``, traffic to ``addrs`` stays on the test bridge (or is
        the namespace's own address)."""
        for addr in addrs:
            route = ip("netns", "exec", ns, "ip", "route", "get", addr).stdout
            assert route.startswith("local ") or ("dev eth0" in route and "via" not in route), route

    def close(self):
        for _, _, p in self.sshd:
            p.send_signal(signal.SIGTERM)   # `timeout` forwards it to sshd
        for _, _, p in self.sshd:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
