"""Shared by ``mpi`` and ``slurm``: ONE carrier process (mpirun / srun) starts a launch agent per
plan process; each agent picks its spec by its rank from a 0600 plan file in a private 0700
directory (removed at ``close``), so the job env never appears in an argv. The carrier's output
holds every agent's framed lines, routed here to the right process."""
import json
import os
import shutil
import signal
import subprocess
import tempfile

from ..output import LineSink
from .base import AgentHandle, Backend, ExitStatus, frame_router
from .local import PopenHandle, popen


class CarrierBackend(Backend):
    """Subclasses give ``carrier_command(plan, order, plan_file)`` and ``rank_var``."""

    rank_var = None

    def __init__(self, config):
        super().__init__(config)
        self.tmpdir = None
        self.carrier = None

    def order(self, plan):
        """Spec index of each carrier rank (hosts in order, so block placement matches)."""
        host_index = {h.name: i for i, h in enumerate(plan.hosts)}
        return sorted(range(len(plan.specs)), key=lambda i: host_index[plan.specs[i].host])

    def write_plan(self, plan, order):
        # under cwd: mpirun/srun on other nodes need to read it, and cwd is the shared directory
        base = self.config.cwd if os.access(self.config.cwd, os.W_OK) else None
        self.tmpdir = tempfile.mkdtemp(prefix=".psframe-launch-", dir=base)
        path = os.path.join(self.tmpdir, "plan.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"order": order, "specs": [
                {"index": i, "command": list(s.command), "cwd": s.cwd, "env": s.env}
                for i, s in enumerate(plan.specs)]}, f)
        return path

    def carrier_env(self):
        return None

    def start(self, plan, events, sinks):
        order = self.order(plan)
        path = self.write_plan(plan, order)
        handles = [AgentHandle(spec, events, sink) for spec, sink in zip(plan.specs, sinks)]
        agent = [self.config.python, "-m", "psframe_launcher.agent", "--plan", path,
                 "--rank-var", self.rank_var]
        command = self.carrier_command(plan, order, agent)
        own = LineSink(f"{self.name}@{plan.hosts[0].name}", self.config.log_dir, sinks[0].stream)
        proc = popen(command, env=self.carrier_env(), cwd=self.config.cwd)
        self.carrier = PopenHandle(None, events, own, proc)

        def carrier_ended(returncode, at):
            for h in handles:   # whoever never reported its end was lost with the carrier
                h.post_exit(ExitStatus(code=returncode, lost=True), at)
        self.carrier.watch(frame_router(dict(enumerate(handles)), own.write), carrier_ended,
                           name=self.name)
        self.own_sink = own
        return handles

    def stop(self, handles, grace):
        if self.carrier is None:
            return
        proc = self.carrier.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)   # mpirun/srun forward it to every agent
            try:
                proc.wait(timeout=grace + 5.0)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)   # srun: a second signal forces termination
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
        self.carrier.signal_group(signal.SIGKILL)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        self.carrier.waiter.join(timeout=2.0)

    def close(self):
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        if getattr(self, "own_sink", None):
            self.own_sink.close()
