"""The ``Backend`` interface (start a plan -> one ``ProcessHandle`` per spec; stop them all),
``ExitStatus``, and the backend registry (``local``, ``ssh``, ``mpi``, ``slurm``)."""
import abc
import dataclasses
import importlib
import signal
import time

from psframe.config import EXIT_ABORTED_BY_PEER
from psframe.errors import ConfigError

from . import REGISTRY


@dataclasses.dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit ``code``, or the ``signal`` that killed it; ``lost`` when
    the mechanism carrying it (ssh, mpirun, srun) ended before it reported its own end;
    ``stopped`` when its launch agent was told to stop it first (mpirun/srun tearing the job
    down after another process ended)."""
    code: int = None
    signal: int = None
    lost: bool = False
    stopped: bool = False

    @classmethod
    def from_returncode(cls, returncode):
        return cls(signal=-returncode) if returncode < 0 else cls(code=returncode)

    @property
    def ok(self):
        return self.code == 0 and self.signal is None and not self.lost

    @property
    def aborted_by_peer(self):
        """The process stopped because *another* process failed (it exited
        ``EXIT_ABORTED_BY_PEER``): never the root cause while a real failure exists."""
        return self.code == EXIT_ABORTED_BY_PEER and self.signal is None

    @property
    def own_failure(self):
        """Failed on its own: a root-cause candidate (not stopped by a peer's failure or by
        whatever stopped the job)."""
        return not self.ok and not self.aborted_by_peer and not self.stopped

    @property
    def exit_code(self):
        """The launcher's own exit code for this status (shell convention 128+N for signals)."""
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code else 1 if not self.ok else 0

    def describe(self):
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            text = f"killed by {name} (signal {self.signal})"
        else:
            text = f"exited with code {self.code}"
            if self.aborted_by_peer:
                text += " (stopped because another process failed)"
        if self.stopped:
            text += " (after its launch agent was told to stop it)"
        return text + (" (its host connection or launcher process ended first)" if self.lost else "")


class ProcessHandle:
    """One running process of the job, as its backend sees it. Backends post exits through
    ``post_exit``; the supervisor reads them from the shared event queue."""

    def __init__(self, spec, events, sink):
        self.spec = spec
        self.events = events          # queue.Queue of (monotonic time, handle)
        self.sink = sink              # output.LineSink of this process
        self.pid = None               # the process's pid on its host, when known
        self.status = None            # ExitStatus once ended
        self.exited_at = None

    def post_exit(self, status, at=None):
        """Record the first report of this process's end (``at``: when it ended, monotonic, if
        known earlier than now) and wake the supervisor."""
        if self.status is None:
            self.status, self.exited_at = status, at if at is not None else time.monotonic()
            self.events.put((self.exited_at, self))


class Backend(abc.ABC):
    """Turns a plan's specs into running processes. Deciding who dies when is not its job."""

    name = "base"

    def __init__(self, config):
        self.config = config

    @abc.abstractmethod
    def hosts(self):
        """The job's hosts (``hosts.Host``), first one runs the scheduler."""

    @abc.abstractmethod
    def start(self, plan, events, sinks):
        """Start every spec of ``plan`` (in order); return their handles in the same order.

        Raises:
            LaunchError: a process could not be started at all.
        """

    @abc.abstractmethod
    def stop(self, handles, grace):
        """Stop everything still running (SIGTERM to process groups, SIGKILL after ``grace``
        seconds) and return once all of it is gone, within a bounded time."""

    def close(self):
        """Remove temporary files; called once after ``stop``."""


class LaunchError(RuntimeError):
    """A process of the job could not be started (the report names which and why)."""


def get_backend(name, config):
    """Instantiate the backend called ``name``.

    Raises:
        ConfigError: no such backend.
    """
    if name not in REGISTRY:
        raise ConfigError(f"--launcher {name!r} is unknown; use one of {', '.join(REGISTRY)}")
    module = importlib.import_module(f"{__package__}.{REGISTRY[name]}")
    return module.BACKEND(config)


class AgentHandle(ProcessHandle):
    """A process run by a launch agent (``agent.py``): its pid and end arrive as framed events."""

    def on_event(self, event):
        if event.get("event") == "start":
            self.pid = event.get("pid")
        elif event.get("event") == "exit":
            self.post_exit(ExitStatus(code=event.get("code"), signal=event.get("signal"),
                                      stopped=bool(event.get("stopped"))))


def frame_router(handles, fallback):
    """An ``on_line`` callback: framed lines go to ``handles[index]`` (output to its sink, events
    to ``on_event``), anything else (ssh's, mpirun's or srun's own words) to ``fallback``."""
    from ..output import parse_frame

    def on_line(line):
        frame = parse_frame(line)
        handle = handles.get(frame[0]) if frame else None
        if handle is None:
            fallback(line)
        elif frame[1] == "o":
            handle.sink.write(frame[2])
        else:
            handle.on_event(frame[2])
    return on_line
