"""``psframe-deploy bootstrap``: what every node runs once at boot (from the stack's UserData).

1. Learn its own instance id (``--instance-id``, ``PSFRAME_INSTANCE_ID``, else EC2 metadata).
2. Wait until the EC2 API shows all the stack's nodes (by the ``psframe:stack`` tag) with
   private addresses; number them in the shared order and tag itself with its index.
3. Cluster ssh: the head makes an ed25519 key and stores the private key as an SSM SecureString
   readable only under the stack's role; the others fetch it. Every node authorises the key, so
   ``psframe-launch --launcher ssh`` on the head reaches all of them. The key travels only in
   API request bodies and files of mode 0600: never in an argv, the UserData or a log.
4. Write the hostfile and ``cluster.json`` (what ``psframe-deploy launch`` needs) to
   ``--state-dir``.
5. Signal the stack's creation policy (``SignalResource``): SUCCESS, or FAILURE with the cause.
"""
import json
import os
import pwd
import subprocess
import sys
import time
import urllib.request

from . import nodes as nodelib
from .aws import DeployError, client, describe, error_code, session

IMDS = "http://169.254.169.254"
KEY_NAME = "psframe_cluster"


def instance_id_from_metadata(timeout=2.0):
    """This instance's id from EC2 instance metadata (IMDSv2).

    Raises:
        DeployError: no metadata service answered (not on EC2).
    """
    try:
        req = urllib.request.Request(f"{IMDS}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            token = r.read().decode()
        req = urllib.request.Request(f"{IMDS}/latest/meta-data/instance-id",
                                     headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode().strip()
    except OSError as exc:
        raise DeployError(f"no EC2 instance metadata at {IMDS} ({exc}); outside EC2 pass "
                          f"--instance-id or set PSFRAME_INSTANCE_ID") from None


def wait_for_nodes(ec2, stack, workers, servers, timeout, poll, log):
    """The stack's nodes, in order, once all of them exist with private addresses.

    Raises:
        DeployError: they did not all appear within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    said = None
    while True:
        found = nodelib.fetch(ec2, stack)
        missing = nodelib.complete(found, workers, servers)
        if missing is None:
            return nodelib.ordered(found)
        if missing != said:
            log(f"waiting for the stack's nodes: {missing}")
            said = missing
        if time.monotonic() >= deadline:
            raise DeployError(f"after {timeout:g}s the EC2 API shows {missing} of stack {stack!r}; "
                              f"check the stack's events (psframe-deploy status)")
        time.sleep(poll)


def own_node(ec2, stack, instance_id):
    """This instance as a ``Node`` (its role from its tags).

    Raises:
        DeployError: the instance is unknown or is not a node of ``stack``.
    """
    try:
        res = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except Exception as exc:
        raise DeployError(f"cannot describe instance {instance_id} ({describe(exc)}); check "
                          f"--instance-id and the node's role") from None
    insts = [i for r in res for i in r["Instances"]]
    tags = {t["Key"]: t["Value"] for i in insts for t in i.get("Tags", [])}
    if not insts or tags.get(nodelib.STACK_TAG) != stack:
        raise DeployError(f"instance {instance_id} is not a node of stack {stack!r} (its "
                          f"{nodelib.STACK_TAG} tag is {tags.get(nodelib.STACK_TAG)!r})")
    return nodelib.from_instance(insts[0])


def _owner(user):
    try:
        entry = pwd.getpwnam(user)
        return entry.pw_uid, entry.pw_gid, entry.pw_dir
    except KeyError:
        raise DeployError(f"ssh user {user!r} does not exist on this node; pass --ssh-user") from None


def _write_private(path, data, owner):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.chmod(path, 0o600)
    if owner:
        os.chown(path, owner[0], owner[1])


def share_key(ssm, stack, me, ssh_dir, owner, timeout, poll, log):
    """Make (head) or fetch (others) the cluster key into ``ssh_dir`` and authorise it.
    Returns the private key's path."""
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    if owner:
        os.chown(ssh_dir, owner[0], owner[1])
    key = os.path.join(ssh_dir, KEY_NAME)
    name = nodelib.key_parameter(stack)
    if me.head:
        if not os.path.exists(key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"psframe-{stack}",
                            "-f", key], check=True, timeout=30, stdout=subprocess.DEVNULL)
        with open(key) as f:
            secret = f.read()
        ssm.put_parameter(Name=name, Value=secret, Type="SecureString", Overwrite=True,
                          Description=f"psframe cluster {stack}: ssh key of its nodes")
        log(f"stored the cluster ssh key in SSM SecureString {name}")
    else:
        deadline = time.monotonic() + timeout
        while True:
            try:
                secret = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
                break
            except Exception as exc:   # botocore ClientError: only "not there yet" is retried
                if error_code(exc) != "ParameterNotFound":
                    raise
            if time.monotonic() >= deadline:
                raise DeployError(f"the head did not store {name} within {timeout:g}s; see "
                                  f"/var/log/psframe-bootstrap.log on the head")
            time.sleep(poll)
        _write_private(key, secret, owner)
        log(f"fetched the cluster ssh key from {name}")
    if owner:
        os.chown(key, owner[0], owner[1])
    public = subprocess.run(["ssh-keygen", "-y", "-f", key], check=True, timeout=30,
                            capture_output=True, text=True).stdout.strip()
    with open(key + ".pub", "w") as f:
        f.write(public + "\n")
    auth = os.path.join(ssh_dir, "authorized_keys")
    present = os.path.exists(auth) and public in open(auth).read()
    if not present:
        with open(auth, "a") as f:
            f.write(public + "\n")
        os.chmod(auth, 0o600)
        if owner:
            os.chown(auth, owner[0], owner[1])
    return key


def write_state(state_dir, stack, order, slots, key):
    os.makedirs(state_dir, exist_ok=True)
    hostfile = os.path.join(state_dir, "hostfile")
    with open(hostfile, "w") as f:
        f.write(nodelib.hostfile(stack, order, slots))
    state = {"stack": stack, "hostfile": hostfile, "identity": key,
             "known_hosts": os.path.join(os.path.dirname(key), "psframe_known_hosts")}
    with open(os.path.join(state_dir, "cluster.json"), "w") as f:
        json.dump(state, f, indent=1)
    for path in (hostfile, os.path.join(state_dir, "cluster.json")):
        os.chmod(path, 0o644)
    return hostfile


def _signal(cfn, stack, me, instance_id, status, log):
    """Signal the stack resource ``me`` belongs to (its creation policy counts the signals)."""
    resource = nodelib.SIGNAL_RESOURCE.get(me.kind)
    if resource is None:
        raise DeployError(f"instance {instance_id} has no {nodelib.ROLE_TAG} tag of worker or server; "
                          f"it is not a node this stack's template made")
    try:
        cfn.signal_resource(StackName=stack, LogicalResourceId=resource, UniqueId=instance_id,
                            Status=status)
        log(f"signalled {status} to {stack}/{resource}")
    except Exception as exc:
        raise DeployError(f"CloudFormation did not take the {status} signal for {stack}/{resource} "
                          f"({describe(exc)}); the stack times out on its creation policy") from None


def bootstrap(ns, log=lambda m: print(f"psframe-deploy bootstrap: {m}", flush=True)):
    """Run every step; returns 0, or raises ``DeployError`` after signalling FAILURE."""
    instance_id = ns.instance_id or os.environ.get("PSFRAME_INSTANCE_ID") or instance_id_from_metadata()
    sess = session(ns.region)
    ec2, ssm, cfn = client(sess, "ec2"), client(sess, "ssm"), client(sess, "cloudformation")
    import psframe
    log(f"psframe {getattr(psframe, '__version__', '?')} on {sys.executable}; instance {instance_id}")
    me = None
    try:
        me = own_node(ec2, ns.stack, instance_id)
        order = wait_for_nodes(ec2, ns.stack, ns.workers, ns.servers, ns.timeout, ns.poll, log)
        placed = next((n for n in order if n.instance_id == instance_id), None)
        if placed is None:
            raise DeployError(f"instance {instance_id} is not one of stack {ns.stack!r}'s nodes "
                              f"({', '.join(n.instance_id for n in order)}); check --instance-id")
        me = placed
        if not me.head:
            ec2.create_tags(Resources=[instance_id],
                            Tags=[{"Key": nodelib.INDEX_TAG, "Value": str(me.index)}])
        log(f"this node is {me.role} node {me.index}{' (head)' if me.head else ''} "
            f"at {me.private_ip}")
        owner = None
        ssh_dir = ns.ssh_dir
        if ns.ssh_user:
            uid, gid, home = _owner(ns.ssh_user)
            owner = (uid, gid) if os.geteuid() == 0 else None
            ssh_dir = ssh_dir or os.path.join(home, ".ssh")
        ssh_dir = ssh_dir or os.path.expanduser("~/.ssh")
        key = share_key(ssm, ns.stack, me, ssh_dir, owner, ns.timeout, ns.poll, log)
        hostfile = write_state(ns.state_dir, ns.stack, order, ns.slots, key)
        log(f"wrote {hostfile} ({len(order)} nodes)")
    except Exception as exc:
        why = str(exc) if isinstance(exc, DeployError) else describe(exc)
        if ns.signal and me is not None:
            try:
                _signal(cfn, ns.stack, me, instance_id, "FAILURE", log)
            except DeployError as sig:
                log(str(sig))
        raise DeployError(f"bootstrap failed: {why}") from None
    if ns.signal:
        _signal(cfn, ns.stack, me, instance_id, "SUCCESS", log)
    log("done")
    return 0
