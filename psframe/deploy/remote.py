"""``run`` (on your machine: ssh to the head node and run ``psframe-deploy launch`` there,
streaming its output and returning its exit status) and ``launch`` (on the head:
``psframe-launch`` with the hostfile and cluster key that bootstrap wrote)."""
import json
import os
import shlex
import subprocess
import sys

from . import nodes as nodelib
from .aws import DeployError, client, session

SSH_UNREACHABLE = 255


def head_address(sess, stack, private=False):
    """The address to ssh to the head at (public unless ``private`` or it has none).

    Raises:
        DeployError: the stack has no running head node.
    """
    heads = [n for n in nodelib.fetch(client(sess, "ec2"), stack, states=("running",)) if n.head]
    if not heads:
        raise DeployError(f"stack {stack!r} has no running head node; psframe-deploy status "
                          f"--stack {stack}")
    head = heads[0]
    return head.private_ip if private or not head.public_ip else head.public_ip


def ssh_command(ns, address, remote_argv):
    cmd = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={ns.connect_timeout:g}"]
    if ns.identity:
        cmd += ["-i", ns.identity]
    if ns.ssh_port:
        cmd += ["-p", str(ns.ssh_port)]
    for option in ns.ssh_option:
        cmd += ["-o", option]
    return cmd + [f"{ns.user}@{address}", shlex.join(remote_argv)]


def run(ns, out=print):
    """Exit status of the job (ssh passes the remote one through)."""
    args = list(ns.launch_args)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        raise DeployError("nothing to run: psframe-deploy run --stack NAME -- -n N script.py [args]")
    address = ns.head or head_address(session(ns.region), ns.stack, ns.private)
    remote = [ns.remote_command, "launch", "--state-dir", ns.state_dir, "--", *args]
    proc = subprocess.run(ssh_command(ns, address, remote), stdin=subprocess.DEVNULL)
    if proc.returncode == SSH_UNREACHABLE:
        print(f"psframe-deploy run: ssh to {ns.user}@{address} failed (exit 255): check that "
            f"--ssh-cidr covers your address, your key (-i) and that the stack is up; or the "
            f"job's own exit status was 255", file=sys.stderr)
    return proc.returncode


def launch(ns):
    """Replace this process with psframe-launch (its exit status is the job's).

    Raises:
        DeployError: bootstrap has not written the cluster state on this node.
    """
    path = os.path.join(ns.state_dir, "cluster.json")
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read {path} ({exc}); is this the head node of a cluster "
                          f"that psframe-deploy bootstrap finished on?") from None
    args = list(ns.launch_args)
    if args[:1] == ["--"]:
        args = args[1:]
    argv = [sys.executable, "-m", "psframe_launcher", "-H", state["hostfile"],
            "--ssh-identity", state["identity"],
            "--ssh-option", "StrictHostKeyChecking=accept-new",
            "--ssh-option", f"UserKnownHostsFile={state['known_hosts']}",
            "--ssh-option", "LogLevel=ERROR", *args]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
