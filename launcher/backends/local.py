"""``local``: every process a child of the launcher on this machine, each in its own session
(process group) so that stopping it stops whatever it started too, and a reaper beside them
(``reaping``) that kills what is left of the job when the launcher ends, even by SIGKILL."""
import ctypes
import os
import signal
import subprocess
import threading
import time

from psframe.errors import ConfigError

from ..hosts import Host
from ..output import pump
from .. import reaping
from ..plan import child_env
from .base import Backend, ExitStatus, LaunchError, ProcessHandle

LOCAL_HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class PopenHandle(ProcessHandle):
    """A process started by ``subprocess.Popen`` (here, or the ssh client of a remote one)."""

    def __init__(self, spec, events, sink, proc):
        super().__init__(spec, events, sink)
        self.proc = proc
        self.pid = proc.pid

    def watch(self, on_line, on_exit, name=None):
        """Pump output and wait for the exit in background threads."""
        name = name or self.spec.label
        self.reader = pump(self.proc.stdout, on_line, name)

        def wait():
            returncode = self.proc.wait()
            ended = time.monotonic()
            # let the last lines in (bounded): a report without the final words is useless
            self.reader.join(timeout=2.0)
            on_exit(returncode, ended)
        self.waiter = threading.Thread(target=wait, name=f"wait-{name}", daemon=True)
        self.waiter.start()

    def signal_group(self, sig):
        # Safe even after the leader was reaped: Linux never reuses a pid while a process group
        # of that id still has members, and a forked grandchild must not outlive the job.
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def die_with_parent():
    """``preexec_fn``: the kernel SIGKILLs the child if its parent dies (even by SIGKILL), so a
    killed launcher or agent never leaves an orphan behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def popen(command, env, cwd, stdin=subprocess.DEVNULL):
    """Start ``command`` in a new session with stdout+stderr piped to us."""
    try:
        return subprocess.Popen(command, env=env, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
    except OSError as exc:
        raise LaunchError(f"cannot run {command[0]!r}: {exc.strerror}") from None


def stop_groups(handles, grace):
    """SIGTERM every live process group, SIGKILL what is left after ``grace`` s, reap all."""
    live = [h for h in handles if h.proc.returncode is None]
    for h in handles:
        h.signal_group(signal.SIGTERM)
        h.signal_group(signal.SIGCONT)   # a stopped (hung) process acts on SIGTERM only once resumed
    deadline = time.monotonic() + grace
    for h in live:
        try:
            h.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for h in handles:
        h.signal_group(signal.SIGKILL)
    for h in handles:
        try:
            h.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        h.waiter.join(timeout=2.0)


class LocalBackend(Backend):
    name = "local"

    def hosts(self):
        if self.config.hostfile:
            raise ConfigError("-H HOSTFILE starts processes on other hosts: use --launcher ssh "
                              "(the default with -H) or mpi, not local")
        return [Host(LOCAL_HOST, self.config.num_workers)]

    def start(self, plan, events, sinks):
        handles = []
        self.reaper = start_reaper(plan.specs[0].env.get(reaping.JOB_ID), self.config.python)
        try:
            for spec, sink in zip(plan.specs, sinks):
                proc = popen(list(spec.command), child_env(spec, os.environ), spec.cwd)
                handle = PopenHandle(spec, events, sink, proc)
                handle.watch(sink.write, lambda rc, at, h=handle: h.post_exit(ExitStatus.from_returncode(rc), at))
                handles.append(handle)
        except LaunchError as exc:
            self.stop(handles, self.config.kill_grace)
            raise LaunchError(f"{spec.label}: {exc}") from None
        return handles

    def stop(self, handles, grace):
        stop_groups(handles, grace)

    def close(self):
        end_reaper(getattr(self, "reaper", None))


def start_reaper(job_id, python):
    """Start the job's reaper (None without a job id); it sweeps when its stdin closes."""
    if not job_id:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSFRAME_")}
    try:
        return subprocess.Popen([python, "-m", "psframe_launcher.reaping", job_id], env=env,
                                stdin=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise LaunchError(f"cannot start the job's reaper with {python!r}: {exc.strerror}") \
            from None


def end_reaper(reaper):
    """Close the reaper's stdin (it sweeps the job's leftovers) and wait for it (bounded)."""
    if reaper is None:
        return
    reaper.stdin.close()
    try:
        reaper.wait(timeout=reaping.SWEEP_DEADLINE + 5)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


BACKEND = LocalBackend
