"""Nothing of a job outlives its launcher, not even what its processes started.

Every process of a job carries ``PSFRAME_JOB_ID`` in its environment, and so does whatever it
starts (children inherit the environment; ``/proc/PID/environ`` keeps the one a process was
started with). Two mechanisms use that:

- **The reaper** (``python -m psframe_launcher.reaping JOB_ID``), started by the local backend
  beside the job. It reads its stdin, a pipe from the launcher, until EOF: the launcher closes it
  after stopping the job, and the kernel closes it when the launcher dies, even by SIGKILL. Then
  it kills every process still tagged with the job id, on this host, and exits. The job's
  processes themselves already die with the launcher (``PR_SET_PDEATHSIG``); the reaper takes
  what they started, including children that left their process group.
- **Agents** (ssh, mpi, slurm) make themselves child subreapers, so what their process starts is
  re-parented to the agent when its parent dies, and kill every descendant when they end.

A process that replaces its whole environment and leaves its process group escapes both.
"""
import ctypes
import os
import signal
import sys
import time

from psframe.config import JOB_ID

_PR_SET_CHILD_SUBREAPER = 36
SWEEP_DEADLINE = 5.0


def _pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def job_pids(job_id):
    """Pids of live processes (not this one) started with ``PSFRAME_JOB_ID=job_id``."""
    needle = f"{JOB_ID}={job_id}".encode()
    me, found = os.getpid(), []
    for pid in _pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:          # gone, or not ours to read
            pass
    return found


def descendants(root):
    """Pids of every live descendant of ``root``."""
    children = {}
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(b")") + 2:].split()[:2]
        if state != b"Z":        # a zombie is dead already: its parent only has to reap it
            children.setdefault(int(ppid), []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def kill_all(find, deadline=SWEEP_DEADLINE):
    """SIGKILL whatever ``find()`` returns until it returns nothing (bounded by ``deadline``
    seconds: a process may fork while being swept). Returns what was still found at the end."""
    end = time.monotonic() + deadline
    while True:
        pids = find()
        if not pids or time.monotonic() > end:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)


def reap_children():
    """Collect the exit status of every ended child (subreapers inherit orphans to reap)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become_subreaper():
    """Orphaned descendants of this process are re-parented to it, not to init (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0]:
        sys.exit("usage: python -m psframe_launcher.reaping JOB_ID (started by psframe-launch)")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)   # a Ctrl-C or a stop of the job must not skip the sweep
    while os.read(0, 4096):
        pass
    left = kill_all(lambda: job_pids(argv[0]))
    if left:
        sys.stderr.write(f"psframe-launch reaper: processes {left} of job {argv[0]} survived "
                         f"{SWEEP_DEADLINE:.0f} s of SIGKILL\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
