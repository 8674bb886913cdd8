"""``ssh``: one system ``ssh`` client per process, each running the launch agent on its host.

The spec (command, cwd and the job env, which may hold secrets from ``--env``) travels as one
JSON line on the ssh connection's stdin, never in an argv. Closing that stdin is how the launcher
stops the remote process; the agent also stops it if the connection drops. ssh runs with
BatchMode (never prompts) and honours ``~/.ssh/config``; the same Python (``sys.executable``)
and working directory must exist on every host.
"""
import json
import shlex
import subprocess
import time

from psframe.errors import ConfigError

from ..hosts import read_hostfile
from .base import AgentHandle, Backend, ExitStatus, frame_router
from .local import PopenHandle, popen, stop_groups


class SshHandle(AgentHandle):
    def signal_group(self, sig):
        self.client.signal_group(sig)


def ssh_command(config, host):
    """The ssh client argv for ``host`` (no job data in it)."""
    cmd = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
           "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
    if config.ssh_port:
        cmd += ["-p", str(config.ssh_port)]
    if config.ssh_identity:
        cmd += ["-i", config.ssh_identity]
    for option in config.ssh_options:
        cmd += ["-o", option]
    remote = f"exec {shlex.quote(config.python)} -m psframe_launcher.agent --stdin"
    return cmd + [host, remote]


class SshBackend(Backend):
    name = "ssh"

    def hosts(self):
        if not self.config.hostfile:
            raise ConfigError("--launcher ssh needs the hosts: -H HOSTFILE")
        return read_hostfile(self.config.hostfile)

    def start(self, plan, events, sinks):
        handles = []
        for index, (spec, sink) in enumerate(zip(plan.specs, sinks)):
            handle = SshHandle(spec, events, sink)
            client = popen(ssh_command(self.config, spec.host), env=None, cwd=None,
                           stdin=subprocess.PIPE)
            message = {"index": index, "command": list(spec.command), "cwd": spec.cwd,
                       "env": spec.env}
            try:
                client.stdin.write(json.dumps(message).encode() + b"\n")
                client.stdin.flush()
            except OSError:
                pass   # ssh already failed; its exit code and words tell why
            handle.client = PopenHandle(spec, events, sink, client)
            router = frame_router({index: handle}, lambda line, s=sink: s.write(f"(ssh) {line}"))
            handle.client.watch(router,
                                lambda rc, at, h=handle: h.post_exit(ExitStatus(code=rc, lost=True), at))
            handles.append(handle)
        return handles

    def stop(self, handles, grace):
        clients = [h.client for h in handles]
        # closing stdin tells each agent to stop its process (TERM, KILL after its grace)
        for c in clients:
            try:
                c.proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + grace + 2.0
        for c in clients:
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        stop_groups(clients, 0.5)


BACKEND = SshBackend
