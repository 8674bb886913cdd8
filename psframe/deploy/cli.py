"""``psframe-deploy``: argparse -> the subcommands of ``stack``, ``remote``, ``bootstrap`` and
``bake``. Every failure ends in one ``psframe-deploy: error: ...`` line and exit status 2."""
import argparse
import sys

from .aws import DeployError

DEFAULT_STATE_DIR = "/etc/psframe"


def _stack_flags(p):
    p.add_argument("--stack", required=True, help="CloudFormation stack name")
    p.add_argument("--region", default=None, help="AWS region (default: AWS_REGION or the profile's)")


def _wait_flags(p, timeout):
    p.add_argument("--timeout", type=float, default=timeout, metavar="SECONDS",
                   help=f"give up waiting after this long (default {timeout:g})")
    p.add_argument("--poll", type=float, default=10.0, metavar="SECONDS", help="poll interval")


def _up(sub):
    from .stack import TEMPLATE
    p = sub.add_parser("up", help="create the cluster stack and wait until every node is ready")
    _stack_flags(p)
    p.add_argument("--bucket", required=True, help="S3 bucket for data and checkpoints")
    p.add_argument("--ssh-cidr", required=True, help="who may ssh in, e.g. 203.0.113.7/32")
    p.add_argument("--key-name", help="existing EC2 key pair for your ssh login")
    p.add_argument("--workers", type=int, help="worker nodes, head included (default 2)")
    p.add_argument("--servers", type=int, help="server nodes (default 1)")
    p.add_argument("--slots", type=int, help="workers per worker node, e.g. GPUs (default 1)")
    p.add_argument("--worker-type", help="worker instance type (default g5.xlarge)")
    p.add_argument("--server-type", help="server instance type (default c5.xlarge)")
    p.add_argument("--image-id", help="AMI id, e.g. from psframe-deploy bake")
    p.add_argument("--image-parameter", help="SSM parameter naming the AMI (default: the Deep "
                                             "Learning Base AMI's)")
    p.add_argument("--psframe-source", help="pip requirement of psframe the nodes install")
    p.add_argument("--vpc", help="existing VPC (with --subnet; default: a new VPC)")
    p.add_argument("--subnet", help="existing subnet of --vpc")
    p.add_argument("--template", default=TEMPLATE, help="CloudFormation template")
    _wait_flags(p, 2400)


def _ssh_flags(p):
    p.add_argument("--user", default="ubuntu", help="ssh user on the head (default ubuntu)")
    p.add_argument("-i", "--identity", help="your ssh private key file (of --key-name)")
    p.add_argument("--ssh-port", type=int, help="ssh port of the head")
    p.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra ssh -o option (repeatable)")
    p.add_argument("--connect-timeout", type=float, default=15.0, metavar="SECONDS")


def build_parser():
    p = argparse.ArgumentParser(prog="psframe-deploy",
                                description="A psframe cluster on EC2 from one CloudFormation stack.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _up(sub)
    s = sub.add_parser("status", help="the stack's status, outputs and nodes")
    _stack_flags(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    d = sub.add_parser("down", help="delete the stack and its cluster ssh key")
    _stack_flags(d)
    _wait_flags(d, 1800)

    r = sub.add_parser("run", help="run psframe-launch on the head node over ssh: "
                                   "run --stack S -- -n N script.py [args]")
    _stack_flags(r)
    _ssh_flags(r)
    r.add_argument("--private", action="store_true",
                   help="ssh to the head's private address (from inside the VPC)")
    r.add_argument("--head", help="ssh to this address instead of looking the head up")
    r.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="bootstrap's directory on the head")
    r.add_argument("--sync", metavar="LOCAL_DIR[:REMOTE_DIR]",
                   help="copy a directory (your scripts) to every node first (default REMOTE_DIR: "
                        "psframe-job in the login user's home, the job's working directory)")
    r.add_argument("--remote-command", default="psframe-deploy",
                   help="psframe-deploy on the head (default: from its PATH)")
    r.add_argument("launch_args", nargs=argparse.REMAINDER, help="-- psframe-launch arguments")

    la = sub.add_parser("launch", help="on the head: psframe-launch with the cluster's hostfile "
                                       "and key (what run calls)")
    la.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    la.add_argument("--sync-dir", help="copy this directory of the head to every other node")
    la.add_argument("launch_args", nargs=argparse.REMAINDER, help="-- psframe-launch arguments")

    b = sub.add_parser("bootstrap", help="on a node at boot: discover the nodes, write the "
                                         "hostfile, share the ssh key, signal the stack")
    _stack_flags(b)
    b.add_argument("--workers", type=int, required=True, help="worker nodes of the stack")
    b.add_argument("--servers", type=int, required=True, help="server nodes of the stack")
    b.add_argument("--slots", type=int, default=1, help="workers per worker node")
    b.add_argument("--instance-id", help="this node's instance id (default: PSFRAME_INSTANCE_ID, "
                                         "else EC2 instance metadata)")
    b.add_argument("--ssh-user", default="ubuntu", help="user whose ~/.ssh gets the cluster key "
                                                        "(default ubuntu; '' for the current user)")
    b.add_argument("--ssh-dir", help="where the key and authorized_keys go (default ~USER/.ssh)")
    b.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="hostfile and cluster.json")
    b.add_argument("--no-signal", dest="signal", action="store_false",
                   help="do not signal CloudFormation (e.g. re-running by hand later)")
    _wait_flags(b, 900)
    b.set_defaults(poll=5.0)

    k = sub.add_parser("bake", help="build the psframe AMI with Packer")
    from .bake import AMI_TEMPLATE
    k.add_argument("--region", default=None)
    k.add_argument("--psframe-source", default=None, help="pip requirement to install")
    k.add_argument("--instance-type", default=None, help="build instance type")
    k.add_argument("--template", default=AMI_TEMPLATE, help="Packer template")
    k.add_argument("--validate-only", action="store_true", help="only packer validate")
    return p


def main(argv=None):
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "up":
            from .stack import up
            return up(ns)
        if ns.command == "status":
            from .stack import status
            return status(ns)
        if ns.command == "down":
            from .stack import down
            return down(ns)
        if ns.command == "run":
            from .remote import run
            return run(ns)
        if ns.command == "launch":
            from .remote import launch
            return launch(ns)
        if ns.command == "bootstrap":
            from .bootstrap import bootstrap
            return bootstrap(ns)
        from .bake import bake
        return bake(ns)
    except DeployError as exc:
        print(f"psframe-deploy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
