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

import pytest

from conftest import require, require_exe

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


# -- hosts in network namespaces, each with its own sshd (the ssh backend's real target) --------
ADDRS = ["10.200.0.11", "10.200.0.12", "10.200.0.13"]
SSH_PORT = 2222
LIFETIME = 300   # seconds: sshd dies by itself even if this process is killed


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


@pytest.fixture(scope="module")
def netns_hosts(tmp_path_factory):
    require(os.geteuid() == 0, "root (to create network namespaces)")
    require_exe("ip")
    require_exe("ssh")
    require(os.path.exists("/usr/sbin/sshd"), "/usr/sbin/sshd (openssh-server)")
    d = tmp_path_factory.mktemp("ssh")
    uid = uuid.uuid4().hex[:6]
    bridge, names = f"pl{uid}-br", [f"pl{uid}-h{i}" for i in (1, 2, 3)]
    procs = []
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for key in ("hostkey", "id_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                           check=True, timeout=20)
        (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        _ip("netns", "add", bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(names, ADDRS), 1):
            _ip("netns", "add", ns)
            _ip("link", "add", f"veth{i}", "netns", ns, "type", "veth", "peer", "name", f"port{i}",
                "netns", bridge)
            _ip("-n", bridge, "link", "set", f"port{i}", "master", "br0")
            _ip("-n", bridge, "link", "set", f"port{i}", "up")
            _ip("-n", ns, "link", "set", f"veth{i}", "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            conf = d / f"sshd_{ns}.conf"
            conf.write_text(f"Port {SSH_PORT}\nListenAddress {addr}\nHostKey {d}/hostkey\n"
                            f"PidFile {d}/sshd_{ns}.pid\nPermitRootLogin prohibit-password\n"
                            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                            "KbdInteractiveAuthentication no\n"
                            f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n"
                            "PrintMotd no\n")
            log = open(d / f"sshd_{ns}.log", "w")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
                 f"hostname {ns}; exec timeout {LIFETIME} /usr/sbin/sshd -D -e -f {conf}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        deadline = time.monotonic() + 10
        for ns in names:
            while ":2222" not in _ip("netns", "exec", ns, "ss", "-ltn").stdout:
                assert time.monotonic() < deadline, (d / f"sshd_{ns}.log").read_text()
                time.sleep(0.05)
        # the rule above all: traffic to the test hosts stays on the test bridge
        for addr in ADDRS[1:]:
            route = _ip("netns", "exec", names[0], "ip", "route", "get", addr).stdout
            assert "dev eth0" in route and "via" not in route, route
        hostfile = d / "hostfile"
        hostfile.write_text("# three netns hosts, 2 workers each\n"
                            + "".join(f"{a} slots=2\n" for a in ADDRS))
        yield {"names": names, "dir": d, "hostfile": str(hostfile),
               "ssh_args": ["--ssh-port", str(SSH_PORT), "--ssh-identity", str(d / "id_ed25519"),
                            "--ssh-option", "StrictHostKeyChecking=no",
                            "--ssh-option", "UserKnownHostsFile=/dev/null",
                            "--ssh-option", "LogLevel=ERROR"]}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)   # `timeout` forwards it to sshd
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ns in names + [bridge]:
            _ip("netns", "del", ns, check=False)
