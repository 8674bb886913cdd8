"""The launch agent: runs ONE process of the job on its host for the ssh, mpi and slurm
backends, and is the only thing there that the launcher talks to.

It reads its ``ProcessSpec`` (command, cwd, job env) from stdin (ssh: nothing secret ever goes
into an argv) or from a 0600 plan file picked by its MPI/Slurm rank, starts the process in its
own session with ``merge_env``, forwards its output framed (``output.frame_*``) with start/exit
events, and stops the whole process group when told to: stdin EOF (the ssh connection ended),
SIGTERM/SIGINT/SIGHUP (mpirun/srun stopping the job) or its parent dying. It is a child
subreaper and kills every descendant left when the process ends. Exits with the process's code
(128+N for signal N).

stdin and the process's output are read from their raw fds with ``select`` and ``os.read``, never
through a buffered file from a thread: a thread still inside ``sys.stdin.buffer.read`` holds the
buffer's lock when the interpreter exits, and Python then dies in "Fatal Python error:
_enter_buffered_busy" on every clean exit.

    python -m psframe_launcher.agent --stdin
    python -m psframe_launcher.agent --plan FILE --rank-var OMPI_COMM_WORLD_RANK
"""
import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from psframe import config as envc
from psframe.aggregation import shm

from . import reaping
from .backends.local import die_with_parent
from .output import frame_event, frame_output
from .plan import merge_env

KILL_GRACE = 3.0
FLUSH_TIMEOUT = 2.0   # for the last lines of output after the process ended
POLL = 0.1            # seconds between checks of the stop conditions
STDIN = 0


class Agent:
    def __init__(self, spec, out=None):
        self.spec = spec
        self.index = spec["index"]
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.proc = None
        self.forwarder = None
        self.stopping = threading.Event()
        self.forward_stop = threading.Event()

    def emit(self, line):
        with self.lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (OSError, ValueError):
                # nobody listens any more (ssh connection gone): stop the process
                self.stopping.set()

    def start(self):
        env = merge_env(self.spec["env"], os.environ)
        try:
            self.proc = subprocess.Popen(
                self.spec["command"], env=env, cwd=self.spec["cwd"], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, bufsize=0, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent)
        except OSError as exc:
            self.emit(frame_output(self.index, f"psframe-launch agent: cannot run "
                                               f"{self.spec['command'][0]!r} in {self.spec['cwd']!r}: {exc}"))
            self.emit(frame_event(self.index, event="exit", code=127, signal=None))
            return False
        self.emit(frame_event(self.index, event="start", pid=self.proc.pid,
                              hostname=socket.gethostname()))
        self.forwarder = threading.Thread(target=self._forward, name="forward", daemon=True)
        self.forwarder.start()
        return True

    def _forward(self):
        """Pass the process's output on line by line until EOF or ``forward_stop`` (set when a
        grandchild that left the group keeps the pipe open after the process ended)."""
        fd, pending = self.proc.stdout.fileno(), b""
        while not self.forward_stop.is_set():
            if not select.select([fd], [], [], POLL)[0]:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                self._emit_output(raw)
        if pending:
            self._emit_output(pending)

    def _emit_output(self, raw):
        self.emit(frame_output(self.index, raw.decode("utf-8", "replace").rstrip("\r")))

    def stop_group(self):
        """SIGTERM the process group, SIGKILL it after the grace period."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 0)):
            try:
                os.killpg(self.proc.pid, sig)
                os.killpg(self.proc.pid, signal.SIGCONT)   # a stopped process must see the TERM
            except (ProcessLookupError, PermissionError):
                return
            deadline = time.monotonic() + wait
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)

    def run(self, watch_stdin=False):
        reaping.become_subreaper()
        if not self.start():
            return 127
        parent = os.getppid()
        stopped = False   # the process ended because we stopped it, not on its own
        while self.proc.poll() is None:
            if watch_stdin:
                self._check_stdin()
            else:
                self.stopping.wait(POLL)
            if self.stopping.is_set() or os.getppid() != parent:
                stopped = self.proc.poll() is None
                self.stop_group()
                break
        returncode = self.proc.wait()
        # the group may still hold a grandchild the process forked, and a descendant that left
        # the group was re-parented to us (a subreaper): never leave either behind
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        reaping.kill_all(lambda: reaping.descendants(os.getpid()))
        reaping.reap_children()
        sweep_host_tier(self.spec["env"])
        # let the forwarder pass on the last lines (bounded): the failure report quotes them,
        # and the exit event must follow them
        self.forwarder.join(timeout=FLUSH_TIMEOUT)
        self.forward_stop.set()
        self.forwarder.join(timeout=FLUSH_TIMEOUT)
        code, sig = (None, -returncode) if returncode < 0 else (returncode, None)
        event = {"event": "exit", "code": code, "signal": sig}
        if stopped:
            event["stopped"] = True
        self.emit(frame_event(self.index, **event))
        return 128 + sig if sig else code

    def _check_stdin(self):
        """Wait up to POLL s on stdin; EOF (or an error) means the launcher let go: stop. The
        launcher sends nothing after the spec, so whatever else arrives is dropped."""
        try:
            if select.select([STDIN], [], [], POLL)[0] and not os.read(STDIN, 65536):
                self.stopping.set()
        except OSError:
            self.stopping.set()


def _read_line(fd):
    """The first line on ``fd``, read unbuffered (nothing is left behind in a Python buffer
    that ``select`` on the fd could not see)."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def sweep_host_tier(job_env):
    """After local rank 0 of a worker ended (the host's aggregator lives in it), remove what the
    job left in this host's /dev/shm (segments are unlinked once every worker attached; a kill
    in between leaves them)."""
    if job_env.get(envc.ROLE) == "worker" and job_env.get(envc.LOCAL_RANK) == "0":
        shm.sweep(shm.job_prefix(job_env.get(envc.SCHEDULER, "")))


def _spec_from_plan(path, rank_var):
    rank = os.environ.get(rank_var)
    if rank is None or not rank.isdigit():
        sys.exit(f"psframe-launch agent: {rank_var} is not set; the agent must be started by "
                 f"mpirun/srun through psframe-launch")
    with open(path, encoding="utf-8") as f:
        plan = json.load(f)
    order = plan["order"]
    if int(rank) >= len(order):
        sys.exit(f"psframe-launch agent: {rank_var}={rank} but the plan has {len(order)} processes; "
                 f"start as many tasks as the plan has processes")
    return plan["specs"][order[int(rank)]]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m psframe_launcher.agent")
    p.add_argument("--stdin", action="store_true", help="read the spec as one JSON line on stdin")
    p.add_argument("--plan", help="plan file written by psframe-launch (0600)")
    p.add_argument("--rank-var", default="OMPI_COMM_WORLD_RANK")
    ns = p.parse_args(argv)
    if ns.stdin:
        line = _read_line(STDIN)
        if not line:
            return 1
        spec = json.loads(line)
    else:
        spec = _spec_from_plan(ns.plan, ns.rank_var)
    agent = Agent(spec)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: agent.stopping.set())
    return agent.run(watch_stdin=ns.stdin)


if __name__ == "__main__":
    sys.exit(main())
