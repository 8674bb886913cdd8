"""Helpers for the launcher's integration tests: running ``psframe-launch`` with a deadline,
finding (and, on failure, killing) every process a test's job started by a tag in its
environment, and watching argvs for secrets."""
import json
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


# launch agents of *this* suite's interpreter (and ssh/mpirun command lines starting them): other
# test runs on the machine have interpreters of their own
HELPERS = rf"{re.escape(VENV_BIN)}/python\S* -m psframe_launcher\.agent|orted"


def worker_results(job):
    """``{rank: value}`` of the ``RESULT <json>`` line each worker of ``job`` printed."""
    results = {}
    for line in job.lines:
        m = re.match(r"\[worker (\d+)@[^\]]+\] RESULT (.*)", line)
        if m:
            results[int(m.group(1))] = json.loads(m.group(2))
    return results


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
