"""Start a real job (scheduler, S servers, N workers as processes on 127.0.0.1) without the
launcher, so the core is tested on its own. Every process is bounded by a deadline and reaped."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from psframe import config as C
from psframe.transport.addresses import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class JobResult:
    codes: dict        # "worker:0" -> exit code
    outputs: dict      # name -> combined stdout+stderr text
    elapsed: float

    def results(self):
        """The JSON line each worker printed last as ``RESULT {...}``, by rank."""
        out = {}
        for name, text in self.outputs.items():
            if name.startswith("worker:"):
                lines = [l for l in text.splitlines() if l.startswith("RESULT ")]
                out[int(name.split(":")[1])] = json.loads(lines[-1][7:]) if lines else None
        return out

    def check(self):
        bad = {n: c for n, c in self.codes.items() if c != 0}
        assert not bad, f"processes failed {bad}:\n" + "\n".join(
            f"--- {n} ---\n{self.outputs[n][-3000:]}" for n in bad)
        return self


def base_env(num_workers, num_servers, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSFRAME_")}
    env.update({C.SCHEDULER: f"tcp://127.0.0.1:{free_port()}", C.NUM_WORKERS: str(num_workers),
                C.NUM_SERVERS: str(num_servers), C.HOST: "127.0.0.1",
                C.HEARTBEAT_INTERVAL: "0.2", C.HEARTBEAT_TIMEOUT: "5", C.START_TIMEOUT: "30",
                C.TIMEOUT: "60", "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_job(script, num_workers=2, num_servers=2, args=(), env=None, timeout=120, start=None,
            per_host=None):
    """Run ``script`` as N workers of a fresh job; returns JobResult. ``start`` limits which
    roles are started (e.g. to leave a worker out on purpose)."""
    job = Job(script, num_workers, num_servers, args, env, start, per_host)
    return job.wait(timeout)


def worker_env(rank, num_workers, per_host=None):
    """Where worker ``rank`` says it is: one host of every worker, or ``per_host`` workers per
    host, host h being 127.0.0.(h+1) (loopback addresses: hosts of one machine)."""
    per_host = per_host or num_workers
    return {C.ROLE: "worker", C.RANK: str(rank), C.LOCAL_RANK: str(rank % per_host),
            C.LOCAL_SIZE: str(per_host), C.HOST: f"127.0.0.{rank // per_host + 1}"}


class Job:
    """A job started in the background; ``procs`` by name ("server:1"), ``wait`` reaps it."""

    def __init__(self, script, num_workers=2, num_servers=2, args=(), env=None, start=None,
                 per_host=None):
        env = base_env(num_workers, num_servers, env)
        specs = [("scheduler", [sys.executable, "-m", "psframe.scheduler"], {C.ROLE: "scheduler"})]
        specs += [(f"server:{s}", [sys.executable, "-m", "psframe.server"],
                   {C.ROLE: "server", C.SERVER_RANK: str(s)}) for s in range(num_servers)]
        specs += [(f"worker:{r}", [sys.executable, os.path.abspath(script), *map(str, args)],
                   worker_env(r, num_workers, per_host)) for r in range(num_workers)]
        if start is not None:
            specs = [s for s in specs if s[0] in start]
        self.procs, self.files = {}, {}
        self.t0 = time.monotonic()
        try:
            for name, cmd, extra in specs:
                f = self.files[name] = tempfile.TemporaryFile("w+")
                self.procs[name] = subprocess.Popen(cmd, env={**env, **extra}, stdout=f,
                                                    stderr=subprocess.STDOUT, cwd=ROOT,
                                                    start_new_session=True)
        except BaseException:
            self.wait(0)
            raise

    def output(self, name):
        """What process ``name`` printed so far (pread: the shared file offset stays put)."""
        fd = self.files[name].fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def wait(self, timeout):
        """Wait up to ``timeout`` s for every process, kill what is left; returns JobResult."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
                time.sleep(0.05)
        finally:
            for p in self.procs.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        outputs = {}
        for name, f in self.files.items():
            f.seek(0)
            outputs[name] = f.read()
            f.close()
        return JobResult({n: p.returncode for n, p in self.procs.items()}, outputs,
                         time.monotonic() - self.t0)
