"""Supervising a job: start the plan, watch every process, stop the whole job within seconds of
the first failure (or a signal to the launcher), choose the exit status, and write the failure
report (every dead process; the root cause first, with its last log lines).

The root cause is the first process to end that failed on its own: one that exited
``EXIT_ABORTED_BY_PEER`` (75) only stopped because another failed, so it is the root cause only
when no other failure exists (nor arrives within ``PEER_ABORT_WAIT`` s of it), and is then
reported as such ("no process reported its own failure")."""
import dataclasses
import logging
import os
import queue
import secrets
import signal
import sys
import threading
import time

from psframe import config as envc
from psframe.aggregation import shm
from psframe.config import parse_blame
from psframe.logs import count
from psframe.transport import credentials
from psframe.transport.addresses import free_port

from .backends.base import LaunchError, get_backend
from .output import LineSink
from .plan import make_plan, with_security

logger = logging.getLogger(__name__)

PORT_ATTEMPTS = 3
SCHEDULER_LINES = 5
# after the first exit with EXIT_ABORTED_BY_PEER, how long to wait for the process whose failure
# caused it to report its own end (it is usually still printing its traceback)
PEER_ABORT_WAIT = 2.0
_ADDRESS_IN_USE = ("address already in use", "eaddrinuse")


@dataclasses.dataclass
class JobResult:
    exit_code: int
    failures: list            # handles that ended non-zero before our stop: the root cause
                              # first, the rest in the order they ended (75s after the others)
    stopped_by: str = None    # "signal SIGTERM" when the launcher itself was told to stop
    retry_port: bool = False  # the scheduler could not bind its port: try another one
    cause_known: bool = True  # False: every failure was EXIT_ABORTED_BY_PEER (no own failure)
    blamed: tuple = None      # (handle, reason): the process the failing scheduler named


def choose_backend(config, env=os.environ):
    """The backend name: the flag, else ssh with a hostfile, slurm inside an allocation
    (``SLURM_JOB_ID`` set), else local."""
    if config.backend:
        return config.backend
    if config.hostfile:
        return "ssh"
    if env.get("SLURM_JOB_ID"):
        return "slurm"
    return "local"


class Job:
    """One attempt at running a plan to its end."""

    def __init__(self, plan, backend, config, out=None, err=None):
        self.plan, self.backend, self.config = plan, backend, config
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.events = queue.Queue()
        self.handles = []
        self.stop_signal = None

    def request_stop(self, signum):
        """Called from a signal handler: stop the job and exit 128+signum."""
        if self.stop_signal is None:
            self.stop_signal = signum
        self.events.put((time.monotonic(), None))

    def run(self):
        sinks = [LineSink(s.label, self.config.log_dir, self.out) for s in self.plan.specs]
        try:
            return self._run(sinks)
        finally:
            for sink in sinks:
                sink.close()
            self.backend.close()
            # the host tier's segments on this machine, if a kill left any (remote hosts:
            # the agent of each local rank 0 does the same there)
            shm.sweep(shm.job_prefix(self.plan.scheduler))

    def _run(self, sinks):
        try:
            self.handles = self.backend.start(self.plan, self.events, sinks)
        except LaunchError as exc:
            self.err.write(f"psframe-launch: could not start the job: {exc}\n")
            return JobResult(1, [])
        workers = [h for h in self.handles if envc.ROLES[h.spec.role].finishes_job]
        done_at = None
        # a process that exits EXIT_ABORTED_BY_PEER was taken down by another one's failure,
        # which is often still on its way out (printing its traceback): wait a little for it
        wait_for_cause_until = None
        while True:
            if self.stop_signal is not None:
                break
            now = time.monotonic()
            timeout = 0.5
            if wait_for_cause_until is not None:   # every failure so far was not its own
                timeout = wait_for_cause_until - now
                if timeout <= 0:
                    logger.debug("no process reported its own failure within %.1f s of the "
                                 "first one stopped by a peer's failure", PEER_ABORT_WAIT)
                    break
            if done_at is not None:
                left = done_at + self.config.shutdown_grace - now
                if left <= 0:
                    logger.warning("scheduler/servers still running %.0f s after every worker "
                                   "ended; stopping them", self.config.shutdown_grace)
                    break
                timeout = min(timeout, left)
            try:
                _, handle = self.events.get(timeout=max(0.0, min(timeout, 0.5)))
            except queue.Empty:
                continue
            if handle is None:
                continue
            if not handle.status.ok:
                if handle.status.own_failure:
                    break
                if wait_for_cause_until is None:
                    wait_for_cause_until = time.monotonic() + PEER_ABORT_WAIT
            if done_at is None and all(w.status is not None for w in workers):
                done_at = time.monotonic()
            if all(h.status is not None for h in self.handles):
                break
        stop_started = time.monotonic()
        self.backend.stop(self.handles, self.config.kill_grace)
        logger.debug("job stopped in %.2f s", time.monotonic() - stop_started)
        # every process that failed on its own before our stop reached it, in the order they
        # ended (an exit can be posted a little after it happened, once its output drained);
        # the root cause (first) is the first that did not stop because of another's failure
        ended = sorted((h for h in self.handles if h.status is not None and not h.status.ok
                        and h.exited_at <= stop_started), key=lambda h: h.exited_at)
        own = [h for h in ended if h.status.own_failure]
        failures = own + [h for h in ended if not h.status.own_failure]
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            return JobResult(128 + self.stop_signal, failures, stopped_by=f"signal {name}")
        if failures:
            root = failures[0]
            retry = root.spec.role == "scheduler" and any(
                m in line.lower() for line in root.sink.tail for m in _ADDRESS_IN_USE)
            return JobResult(root.status.exit_code, failures, retry_port=retry,
                             cause_known=bool(own), blamed=self._blamed(root))
        return JobResult(0, [])

    def _blamed(self, root):
        """The process a failing scheduler named as the cause (a hung or stalling process), with
        the scheduler's reason; None when the root cause is not the scheduler or it named none."""
        if root.spec.role != "scheduler":
            return None
        for line in reversed(root.sink.tail):
            found = parse_blame(line)
            if found:
                role, rank, reason = found
                for h in self.handles:
                    if h.spec.role == role and h.spec.index == rank:
                        return h, reason
        return None

    def report(self, result, restart=None, earlier=()):
        """Write the failure report (when the job succeeded: only the restarts it took).

        Args:
            restart: ``(n, max)`` when the launcher now starts the job again (restart n).
            earlier: ``failure_summary`` of every run before this one (restarted runs).
        """
        w = self.err.write
        if result.exit_code == 0:
            if earlier:
                w(f"psframe-launch: job succeeded after {len(earlier)} restart(s); earlier runs "
                  f"failed: {'; '.join(earlier)}\n")
                self.err.flush()
            return
        w("\n" + "=" * 72 + "\n")
        if result.stopped_by:
            w(f"psframe-launch: stopped by {result.stopped_by}; every process was terminated\n")
        if result.blamed and not result.stopped_by:
            h, reason = result.blamed
            w(f"psframe-launch: ROOT CAUSE: {h.spec.label} (role {h.spec.role}, rank "
              f"{h.spec.index}, host {h.spec.host}, pid {h.pid if h.pid is not None else '?'}): "
              f"{reason} (named by the scheduler, which ended the job)\n")
            if h.sink.tail:
                w(f"  last {len(h.sink.tail)} lines of {h.spec.label}:\n")
                for line in h.sink.tail:
                    w(f"    | {line}\n")
        for n, h in enumerate(result.failures):
            if n == 0 and result.blamed and not result.stopped_by:
                title = "detected by"
            elif n == 0 and not result.stopped_by:
                title = "ROOT CAUSE"
                if not result.cause_known:
                    title = ("ROOT CAUSE: unknown: every process that ended stopped because "
                             "another process failed; no process reported its own failure. "
                             "First to stop")
            else:
                title = "also failed" if h.status.own_failure else "also stopped"
            w(f"psframe-launch: {title}: {h.spec.label} (role {h.spec.role}"
              f"{'' if h.spec.role == 'scheduler' else f', rank {h.spec.index}'}, host {h.spec.host}, "
              f"pid {h.pid if h.pid is not None else '?'}) {h.status.describe()}\n")
            if n == 0 and h.sink.tail:
                w(f"  last {len(h.sink.tail)} lines of {h.spec.label}:\n")
                for line in h.sink.tail:
                    w(f"    | {line}\n")
        root = result.failures[0] if result.failures else None
        scheduler = self.handles[0] if self.handles else None
        if root is not None and scheduler is not None and scheduler is not root and scheduler.sink.tail:
            # the scheduler sees the whole job (heartbeats, registrations): its words often say
            # why the root cause died, or which process never came up
            lines = list(scheduler.sink.tail)[-SCHEDULER_LINES:]
            w(f"  last {len(lines)} lines of {scheduler.spec.label}:\n")
            for line in lines:
                w(f"    | {line}\n")
        blamed = result.blamed[0] if result.blamed else None
        others = [h for h in self.handles if h not in result.failures and h is not blamed]
        if others:
            w("psframe-launch: stopped by the launcher: "
              + ", ".join(h.spec.label for h in others) + "\n")
        if restart is not None:
            n, most = restart
            w(f"psframe-launch: job failed, exit code {result.exit_code}; restart {n} of {most}: "
              f"starting the whole job again with PSFRAME_RESTART={n}\n")
        else:
            for n, line in enumerate(earlier, 1):
                w(f"psframe-launch: run {n} (before restart {n}) failed: {line}\n")
            w(f"psframe-launch: job failed, exit code {result.exit_code}"
              f"{f' after {len(earlier)} restart(s)' if earlier else ''}\n")
        w("=" * 72 + "\n")
        self.err.flush()


def failure_summary(result):
    """One line naming a failed run's root cause (for the restart history)."""
    if not result.failures:
        return f"exit code {result.exit_code}"
    h = result.failures[0]
    return f"{h.spec.label} {h.status.describe()}"


def _scheduler_port(host):
    try:
        return free_port(host)
    except OSError:
        # the scheduler's host is not this machine: a port free here is very likely free there,
        # and a clash is detected ('address in use') and retried with another port
        return free_port("0.0.0.0")


def security_mode(config, hosts):
    """``--security`` as given, else CURVE when the job spans hosts and a token on one host."""
    if config.security is not None:
        return config.security
    return "curve" if len({h.name for h in hosts}) > 1 else "token"


def secure(plan, config):
    """The plan with fresh credentials of this job in every process's environment."""
    mode = security_mode(config, plan.hosts)
    if mode == "none":
        logger.warning("--security none: the job's sockets accept anyone who can reach them; any "
                       "local user (and, across hosts, anyone on the network) can read and change "
                       "the model or stop the job")
        return with_security(plan, mode)
    logger.info("security: %s", mode)
    return with_security(plan, mode, credentials.generate(mode, [s.identity for s in plan.specs]))


def launch(config, out=None, err=None):
    """Run the job of ``config`` to its end and return the launcher's exit code.

    Raises:
        ConfigError: the configuration or the hosts cannot make a job.
    """
    name = choose_backend(config)
    backend = get_backend(name, config)
    hosts = backend.hosts()
    previous = {}
    job = None

    pending = []

    def on_signal(signum, frame):
        pending.append(signum)
        if job is not None:
            job.request_stop(signum)

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        restart, earlier, fresh = 0, [], backend
        while True:
            for attempt in range(1, PORT_ATTEMPTS + 1):
                plan = secure(make_plan(config, hosts, _scheduler_port(hosts[0].name),
                                        secrets.token_hex(8), restart), config)
                logger.info("launching %s, %s via %s; scheduler at %s", count(config.num_workers, "worker"),
                            count(len(plan.by_role("server")), "server"), name, plan.scheduler)
                job = Job(plan, fresh or get_backend(name, config), config, out, err)
                fresh = None                  # a backend is closed with its job
                if pending:   # a signal that came before this job existed still stops it
                    job.request_stop(pending[0])
                result = job.run()
                if not (result.retry_port and attempt < PORT_ATTEMPTS and result.stopped_by is None):
                    break
                logger.warning("scheduler port of %s was taken; retrying with another port",
                               plan.scheduler)
            if result.exit_code == 0 or result.stopped_by or restart >= config.max_restarts:
                job.report(result, earlier=earlier)
                return result.exit_code
            restart += 1
            earlier.append(failure_summary(result))
            job.report(result, restart=(restart, config.max_restarts))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
