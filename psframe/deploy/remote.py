"""``run`` (on your machine: optionally copy a directory to the head, then ssh to the head and run
``psframe-deploy launch`` there, streaming its output and returning its exit status) and
``launch`` (on the head: copy that directory on to every node, then ``psframe-launch`` with the
hostfile and cluster key that bootstrap wrote). Copies are ``tar`` streams over ssh."""
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
    """ssh to the head: never prompts, and gives up on a head that stops answering (2 minutes)
    instead of waiting forever."""
    cmd = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={ns.connect_timeout:g}",
           "-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=4"]
    if ns.identity:
        cmd += ["-i", ns.identity]
    if ns.ssh_port:
        cmd += ["-p", str(ns.ssh_port)]
    for option in ns.ssh_option:
        cmd += ["-o", option]
    return cmd + [f"{ns.user}@{address}", shlex.join(remote_argv)]


def split_sync(spec):
    """``LOCAL[:REMOTE]`` -> (local directory, remote directory; default psframe-job)."""
    local, _, remote = spec.partition(":")
    if not os.path.isdir(local):
        raise DeployError(f"--sync {spec!r}: {local!r} is not a directory")
    return local, remote or "psframe-job"


def copy_dir(local, ssh_argv, remote, timeout=600):
    """Stream ``local``'s contents into ``remote`` over the ssh command ``ssh_argv``.

    Raises:
        DeployError: tar or ssh failed.
    """
    unpack = f"mkdir -p {shlex.quote(remote)} && tar -C {shlex.quote(remote)} -xf -"
    tar = subprocess.Popen(["tar", "-C", local, "-cf", "-", "."], stdout=subprocess.PIPE)
    try:
        copy = subprocess.run([*ssh_argv, unpack], stdin=tar.stdout, timeout=timeout)
    finally:
        tar.stdout.close()
        tar_rc = tar.wait(timeout=timeout)
    if tar_rc or copy.returncode:
        raise DeployError(f"copying {local} to {ssh_argv[-1]}:{remote} failed (tar exit {tar_rc}, "
                          f"ssh exit {copy.returncode})")


def run(ns, out=print):
    """Exit status of the job (ssh passes the remote one through)."""
    args = list(ns.launch_args)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        raise DeployError("nothing to run: psframe-deploy run --stack NAME -- -n N script.py [args]")
    address = ns.head or head_address(session(ns.region), ns.stack, ns.private)
    remote = [ns.remote_command, "launch", "--state-dir", ns.state_dir]
    if ns.sync:
        local, target = split_sync(ns.sync)
        copy_dir(local, ssh_command(ns, address, [])[:-1], target)
        out(f"copied {local} to the head's {target}", flush=True)
        remote += ["--sync-dir", target]
    remote += ["--", *args]
    proc = subprocess.run(ssh_command(ns, address, remote), stdin=subprocess.DEVNULL)
    if proc.returncode == SSH_UNREACHABLE:
        print(f"psframe-deploy run: ssh to {ns.user}@{address} failed (exit 255): check that "
            f"--ssh-cidr covers your address, your key (-i) and that the stack is up; or the "
            f"job's own exit status was 255", file=sys.stderr)
    return proc.returncode


def hosts_of(hostfile):
    """The host names of a hostfile, in order."""
    with open(hostfile) as f:
        return [line.split("#", 1)[0].split()[0] for line in f if line.split("#", 1)[0].strip()]


def _ssh_port(args):
    """The --ssh-port of psframe-launch arguments, if given before the script."""
    for i, arg in enumerate(args[:-1]):
        if arg == "--ssh-port":
            return args[i + 1]
        if arg.startswith("--ssh-port="):
            return arg.split("=", 1)[1]
    return None


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
    ssh_opts = ["-o", "StrictHostKeyChecking=accept-new", "-o",
                f"UserKnownHostsFile={state['known_hosts']}", "-o", "LogLevel=ERROR"]
    port = _ssh_port(args)
    if ns.sync_dir:
        for host in hosts_of(state["hostfile"])[1:]:       # the first is this head
            copy_dir(ns.sync_dir, ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                                   *ssh_opts, *(["-p", port] if port else []),
                                   "-i", state["identity"], host], ns.sync_dir)
        print(f"psframe-deploy launch: copied {ns.sync_dir} to every node", flush=True)
    argv = [sys.executable, "-m", "psframe_launcher", "-H", state["hostfile"],
            "--ssh-identity", state["identity"],
            "--ssh-option", "StrictHostKeyChecking=accept-new",
            "--ssh-option", f"UserKnownHostsFile={state['known_hosts']}",
            "--ssh-option", "LogLevel=ERROR", *args]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
