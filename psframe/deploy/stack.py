"""The stack from the caller's side: ``up`` (create and wait, with progress), ``status`` and
``down`` (delete the stack and its cluster key)."""
import datetime
import json
import os
import time

from . import nodes as nodelib
from .aws import DeployError, client, describe, error_code, session

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
TEMPLATE = os.path.join(TEMPLATES, "psframe-cluster.yaml")
DONE = {"CREATE_COMPLETE"}
FAILED = {"CREATE_FAILED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED",
          "DELETE_COMPLETE", "DELETE_FAILED"}
# psframe-deploy up flag -> template parameter
PARAMETERS = {"worker_type": "WorkerInstanceType", "server_type": "ServerInstanceType",
              "workers": "WorkerCount", "servers": "ServerCount", "slots": "WorkerSlots",
              "key_name": "KeyName", "vpc": "VpcId", "subnet": "SubnetId", "ssh_cidr": "SshCidr",
              "bucket": "DataBucket", "image_parameter": "ImageParameter", "image_id": "ImageId",
              "psframe_source": "PsframeSource"}


def parameters(ns):
    """CloudFormation parameters from the ``up`` flags that were given.

    Raises:
        DeployError: --vpc and --subnet not given together.
    """
    if bool(ns.vpc) != bool(ns.subnet):
        raise DeployError("--vpc and --subnet go together (the subnet of that VPC); give both, "
                          "or neither for a new VPC")
    out = []
    for attr, key in PARAMETERS.items():
        value = getattr(ns, attr, None)
        if value is not None:
            out.append({"ParameterKey": key, "ParameterValue": str(value)})
    return out


def _stack(cfn, name):
    try:
        return cfn.describe_stacks(StackName=name)["Stacks"][0]
    except Exception as exc:
        if error_code(exc) == "ValidationError" and "does not exist" in describe(exc):
            return None
        raise DeployError(f"cannot describe stack {name!r}: {describe(exc)}") from None


def _events(cfn, name, seen):
    """Stack events not printed yet, oldest first."""
    try:
        events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    except Exception:
        return []
    new = [e for e in events if e["EventId"] not in seen]
    seen.update(e["EventId"] for e in new)
    return list(reversed(new))


def _event_line(e):
    when = e.get("Timestamp")
    when = when.strftime("%H:%M:%S") if isinstance(when, datetime.datetime) else ""
    reason = f"  {e['ResourceStatusReason']}" if e.get("ResourceStatusReason") else ""
    return f"  {when} {e['LogicalResourceId']:<22} {e['ResourceStatus']}{reason}"


def wait(cfn, name, want, timeout, poll, out, gone_ok=False):
    """Poll the stack, printing new events, until its status is in ``want``.

    Raises:
        DeployError: it failed (naming the failed resources' reasons) or ``timeout`` passed.
    """
    seen, deadline = set(), time.monotonic() + timeout
    while True:
        for e in _events(cfn, name, seen):
            out(_event_line(e))
        st = _stack(cfn, name)
        status = st["StackStatus"] if st else "DELETE_COMPLETE"
        if status in want or (st is None and gone_ok):
            return st
        if status in FAILED or status.endswith("_FAILED"):
            reasons = [f"{e['LogicalResourceId']}: {e['ResourceStatusReason']}"
                       for e in _events(cfn, name, set()) if e["ResourceStatus"].endswith("FAILED")
                       and e.get("ResourceStatusReason")]
            raise DeployError(f"stack {name} is {status}: " + ("; ".join(reasons[:5]) or
                              st.get("StackStatusReason", "see psframe-deploy status")))
        if time.monotonic() >= deadline:
            raise DeployError(f"stack {name} still {status} after {timeout:g}s; follow it with "
                              f"psframe-deploy status --stack {name}")
        time.sleep(poll)


def cluster_nodes(sess, name):
    return nodelib.fetch(client(sess, "ec2"), name)


def up(ns, out=print):
    sess = session(ns.region)
    cfn = client(sess, "cloudformation")
    if _stack(cfn, ns.stack) is not None:
        raise DeployError(f"stack {ns.stack!r} already exists; psframe-deploy status --stack "
                          f"{ns.stack}, or psframe-deploy down --stack {ns.stack} first")
    try:
        with open(ns.template) as f:
            body = f.read()
    except OSError as exc:
        raise DeployError(f"cannot read template {ns.template!r} ({exc.strerror}); pass "
                          f"--template deploy/cloudformation/psframe-cluster.yaml") from None
    try:
        cfn.create_stack(StackName=ns.stack, TemplateBody=body, Parameters=parameters(ns),
                         Capabilities=["CAPABILITY_IAM"],
                         Tags=[{"Key": nodelib.STACK_TAG, "Value": ns.stack}])
    except Exception as exc:
        raise DeployError(f"CloudFormation refused stack {ns.stack!r}: {describe(exc)}") from None
    out(f"creating stack {ns.stack} in {sess.region_name} (every node signals when bootstrapped)")
    st = wait(cfn, ns.stack, DONE, ns.timeout, ns.poll, out)
    nodes = cluster_nodes(sess, ns.stack)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in st.get("Outputs", [])}
    out(f"stack {ns.stack} is {st['StackStatus']}; nodes:")
    for line in nodelib.table(nodes):
        out(line)
    out(f"hostfile ({outputs.get('Hostfile', '/etc/psframe/hostfile')} on the head):")
    for line in nodelib.hostfile(ns.stack, nodes, ns.slots or 1).splitlines():
        out("  " + line)
    head = next((n for n in nodes if n.head), None)
    if head:
        address = head.public_ip or head.private_ip
        key = f"-i ~/.ssh/{ns.key_name}.pem " if ns.key_name else ""
        out(f"ssh to the head:  ssh {key}ubuntu@{address}")
    out(f"run a job:        psframe-deploy run --stack {ns.stack} -- -n N script.py [args]")
    out(f"tear down:        psframe-deploy down --stack {ns.stack}")
    return 0


def status(ns, out=print):
    sess = session(ns.region)
    cfn = client(sess, "cloudformation")
    st = _stack(cfn, ns.stack)
    if st is None:
        raise DeployError(f"no stack {ns.stack!r} in {sess.region_name}; check --stack and "
                          f"--region (AWS_REGION)")
    nodes = nodelib.ordered(cluster_nodes(sess, ns.stack))
    outputs = {o["OutputKey"]: o["OutputValue"] for o in st.get("Outputs", [])}
    if ns.json:
        out(json.dumps({"stack": ns.stack, "status": st["StackStatus"], "outputs": outputs,
                        "nodes": [{"instance_id": n.instance_id, "role": n.role, "head": n.head,
                                   "index": n.index, "state": n.state,
                                   "private_ip": n.private_ip, "public_ip": n.public_ip}
                                  for n in nodes]}, indent=1))
        return 0
    out(f"stack {ns.stack}: {st['StackStatus']}")
    for key, value in outputs.items():
        out(f"  {key}: {value}")
    out(f"nodes ({len(nodes)}):")
    for line in nodelib.table(nodes):
        out(line)
    failed = [e for e in _events(cfn, ns.stack, set()) if e["ResourceStatus"].endswith("FAILED")]
    for e in failed[-5:]:
        out("failed:" + _event_line(e))
    return 0


def down(ns, out=print):
    sess = session(ns.region)
    cfn, ssm = client(sess, "cloudformation"), client(sess, "ssm")
    if _stack(cfn, ns.stack) is None:
        raise DeployError(f"no stack {ns.stack!r} in {sess.region_name}; nothing to delete")
    name = nodelib.key_parameter(ns.stack)
    try:
        ssm.delete_parameter(Name=name)
        out(f"deleted the cluster ssh key {name}")
    except Exception as exc:
        if error_code(exc) != "ParameterNotFound":
            raise DeployError(f"cannot delete {name}: {describe(exc)}; delete it by hand") from None
    try:
        cfn.delete_stack(StackName=ns.stack)
    except Exception as exc:
        raise DeployError(f"CloudFormation could not delete stack {ns.stack}: {describe(exc)}; "
                          f"see psframe-deploy status --stack {ns.stack}") from None
    out(f"deleting stack {ns.stack}")
    wait(cfn, ns.stack, {"DELETE_COMPLETE"}, ns.timeout, ns.poll, out, gone_ok=True)
    left = nodelib.fetch(client(sess, "ec2"), ns.stack, states=("pending", "running", "stopping",
                                                                 "stopped", "shutting-down"))
    if left:
        raise DeployError(f"stack {ns.stack} is deleted but instances remain: "
                          f"{', '.join(n.instance_id for n in left)}; terminate them by hand")
    out(f"stack {ns.stack} deleted; no instance of it is left")
    return 0
