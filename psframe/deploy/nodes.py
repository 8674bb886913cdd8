"""The nodes of a stack as the EC2 API shows them, in the one order every node and every command
agrees on (head first, then the other worker nodes, then the server nodes, each by private
address), and the hostfile made from them. Pure: callers fetch the instances."""
import dataclasses
import ipaddress

STACK_TAG = "psframe:stack"
ROLE_TAG = "psframe:role"
INDEX_TAG = "psframe:index"
HEAD_TAG = "psframe:head"
LIVE_STATES = ("pending", "running")
# the stack resource each kind of node signals (see deploy/cloudformation/psframe-cluster.yaml)
SIGNAL_RESOURCE = {"head": "Head", "worker": "WorkerGroup", "server": "ServerGroup"}


def key_parameter(stack):
    """The SSM SecureString holding the cluster's ssh private key."""
    return f"/psframe/{stack}/cluster-ssh-key"


@dataclasses.dataclass(frozen=True)
class Node:
    instance_id: str
    role: str               # worker | server
    head: bool
    private_ip: str
    public_ip: str
    state: str
    index: int = -1         # position among the nodes of its role

    @property
    def kind(self):
        return "head" if self.head else self.role


def from_instance(inst):
    """A ``Node`` from one ``describe_instances`` instance dict."""
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    return Node(inst["InstanceId"], tags.get(ROLE_TAG, "?"), tags.get(HEAD_TAG) == "true",
                inst.get("PrivateIpAddress", ""), inst.get("PublicIpAddress", ""),
                inst["State"]["Name"])


def stack_filters(stack, states=LIVE_STATES):
    return [{"Name": f"tag:{STACK_TAG}", "Values": [stack]},
            {"Name": "instance-state-name", "Values": list(states)}]


def fetch(ec2, stack, states=LIVE_STATES):
    """Every instance of ``stack`` in ``states`` as ``Node``s (unordered)."""
    out = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=stack_filters(stack, states)):
        for res in page["Reservations"]:
            out.extend(from_instance(i) for i in res["Instances"])
    return out


def _ip_key(node):
    try:
        return (0, ipaddress.ip_address(node.private_ip))
    except ValueError:
        return (1, node.instance_id)


def ordered(nodes):
    """Head, other workers, servers (each by private address), with ``index`` set per role."""
    workers = sorted((n for n in nodes if n.role == "worker" and not n.head), key=_ip_key)
    heads = [n for n in nodes if n.head]
    servers = sorted((n for n in nodes if n.role == "server"), key=_ip_key)
    out = [dataclasses.replace(n, index=i) for i, n in enumerate(heads + workers)]
    out += [dataclasses.replace(n, index=i) for i, n in enumerate(servers)]
    return out


def complete(nodes, workers, servers):
    """``None`` when ``nodes`` are exactly the stack's ``workers`` worker nodes (one of them the
    head) and ``servers`` server nodes, each with a private address; else what is missing."""
    have_w = sum(n.role == "worker" for n in nodes)
    have_s = sum(n.role == "server" for n in nodes)
    heads = sum(n.head for n in nodes)
    no_ip = [n.instance_id for n in nodes if not n.private_ip]
    if (have_w, have_s, heads) == (workers, servers, 1) and not no_ip:
        return None
    return (f"{have_w}/{workers} worker nodes, {have_s}/{servers} server nodes, {heads} head(s)"
            + (f", no private address yet: {', '.join(no_ip)}" if no_ip else ""))


def hostfile(stack, nodes, slots):
    """The psframe-launch hostfile: worker nodes with ``slots`` workers each, then server nodes
    with one; the head (where the scheduler runs) first."""
    lines = [f"# psframe cluster {stack}: written by psframe-deploy bootstrap",
             "# worker nodes (slots = workers per node), head first; then server nodes"]
    for n in ordered(nodes):
        what = f"{n.role} node {n.index}" + (" (head)" if n.head else "")
        lines.append(f"{n.private_ip} slots={slots if n.role == 'worker' else 1}"
                     f"  # {what} {n.instance_id}")
    return "\n".join(lines) + "\n"


def table(nodes):
    """Human-readable lines: kind, index, id, state, private and public address."""
    return [f"  {n.kind:<6} {n.role} {n.index:<3} {n.instance_id:<20} {n.state:<9} "
            f"private {n.private_ip or '-':<15} public {n.public_ip or '-'}"
            for n in ordered(nodes)]
