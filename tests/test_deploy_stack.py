"""psframe-deploy against a real moto_server on 127.0.0.1 (CloudFormation, EC2, IAM, SSM): ``up``
creates the stack (checked through the AWS APIs: instances, tags, security-group rules, instance
profile, the bucket-scoped policy, the rendered UserData), ``bootstrap`` on the head and a worker
(keys, index tags, hostfile, the SignalResource request), ``status``, ``down``."""
import ast
import base64
import ipaddress
import json
import os
import re
import subprocess
import sys
import uuid

import pytest

from conftest import optional_import, require
from deploy_fixtures import (aws_env, deploy, moto_template, secrets_in, shell_checks)
from s3_fixtures import KEY, REGION, SECRET, running_moto

boto3 = optional_import("boto3")

BUCKET = "psframe-data"
CIDR = "203.0.113.7/32"
WORKERS, SERVERS, SLOTS = 3, 2, 2


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    require(boto3 is not None, "python package boto3 (pip install 'psframe[deploy]')")
    yield from running_moto(tmp_path_factory)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return moto_template(tmp_path_factory.mktemp("tpl"))


@pytest.fixture(scope="module")
def stack(moto, template):
    """``psframe-deploy up`` of a 3-worker-node, 2-server-node stack in an existing VPC; its name,
    output and subnet. (The new-VPC variant is checked on its own below: moto cannot delete a
    stack's route table, so only this one is torn down with ``down``.)"""
    name = "psf-" + uuid.uuid4().hex[:8]
    ec2 = _client(moto, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    result = deploy(["up", "--stack", name, "--bucket", BUCKET, "--ssh-cidr", CIDR,
                     "--workers", str(WORKERS), "--servers", str(SERVERS), "--slots", str(SLOTS),
                     "--key-name", "my-key", "--vpc", vpc, "--subnet", subnet,
                     "--template", template, "--poll", "0.2"],
                    env=aws_env(moto.endpoint), timeout=120)
    assert result.returncode == 0, result.stdout
    return {"name": name, "out": result.stdout, "env": aws_env(moto.endpoint), "subnet": subnet,
            "vpc": vpc}


def _client(moto, service):
    return boto3.client(service, endpoint_url=moto.endpoint, region_name=REGION,
                        aws_access_key_id=KEY, aws_secret_access_key=SECRET)


def _instances(moto, name, states=("running",)):
    res = _client(moto, "ec2").describe_instances(Filters=[
        {"Name": "tag:psframe:stack", "Values": [name]},
        {"Name": "instance-state-name", "Values": list(states)}])["Reservations"]
    return [i for r in res for i in r["Instances"]]


def _tags(inst):
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


def _resources(moto, name):
    cfn = _client(moto, "cloudformation")
    return {r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]}


def _ordered(insts):
    """Independent of psframe.deploy.nodes: head, other workers by address, servers by address."""
    ip = lambda i: ipaddress.ip_address(i["PrivateIpAddress"])        # noqa: E731
    head = [i for i in insts if _tags(i).get("psframe:head") == "true"]
    workers = sorted((i for i in insts if _tags(i)["psframe:role"] == "worker" and i not in head), key=ip)
    servers = sorted((i for i in insts if _tags(i)["psframe:role"] == "server"), key=ip)
    return head + workers, servers


def test_up_prints_progress_nodes_hostfile_and_ssh_line(moto, stack):
    out, name = stack["out"], stack["name"]
    assert f"creating stack {name}" in out and f"stack {name} is CREATE_COMPLETE" in out
    assert re.search(rf"\d\d:\d\d:\d\d {name} +CREATE_IN_PROGRESS", out), out
    workers, servers = _ordered(_instances(moto, name))
    for i in workers:
        assert f"{i['PrivateIpAddress']} slots={SLOTS}  # worker node" in out, out
    for i in servers:
        assert f"{i['PrivateIpAddress']} slots=1  # server node" in out, out
    assert f"ssh -i ~/.ssh/my-key.pem ubuntu@{workers[0]['PrivateIpAddress']}" in out, out
    assert f"psframe-deploy run --stack {name} -- -n N script.py" in out
    assert not secrets_in(out)


def test_instances_types_ami_and_tags(moto, stack):
    name = stack["name"]
    insts = _instances(moto, name)
    workers, servers = _ordered(insts)
    assert (len(workers), len(servers)) == (WORKERS, SERVERS)
    ami = _client(moto, "ssm").get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2")["Parameter"]["Value"]
    assert {i["ImageId"] for i in insts} == {ami}
    assert {i["InstanceType"] for i in workers} == {"g5.xlarge"}
    assert {i["InstanceType"] for i in servers} == {"c5.xlarge"}
    assert {i["SubnetId"] for i in insts} == {stack["subnet"]}
    assert "Vpc" not in _resources(moto, name)
    head = _tags(workers[0])
    assert head["psframe:index"] == "0" and head["psframe:role"] == "worker"
    assert head["aws:cloudformation:stack-name"] == name
    assert sum(_tags(i).get("psframe:head") == "true" for i in insts) == 1
    for i in insts:
        assert _tags(i)["psframe:stack"] == name
    cfn = _client(moto, "cloudformation")
    outputs = {o["OutputKey"]: o["OutputValue"]
               for o in cfn.describe_stacks(StackName=name)["Stacks"][0]["Outputs"]}
    assert outputs["HeadPrivateAddress"] == workers[0]["PrivateIpAddress"]
    assert outputs["Hostfile"] == "/etc/psframe/hostfile"
    assert outputs["RunCommand"] == f"psframe-deploy run --stack {name} -- -n {WORKERS} script.py"


def test_security_group_job_ports_only_between_members_ssh_only_from_cidr(moto, stack):
    name = stack["name"]
    ec2 = _client(moto, "ec2")
    sg_id = _resources(moto, name)["ClusterSecurityGroup"]
    sg, = ec2.describe_security_groups(GroupIds=[sg_id])["SecurityGroups"]
    rules = set()
    for perm in sg["IpPermissions"]:
        for r in perm.get("IpRanges", []):
            rules.add((perm["IpProtocol"], perm["FromPort"], perm["ToPort"], r["CidrIp"]))
        for g in perm.get("UserIdGroupPairs", []):
            rules.add((perm["IpProtocol"], perm["FromPort"], perm["ToPort"], g["GroupId"]))
        assert not perm.get("Ipv6Ranges") and not perm.get("PrefixListIds")
    assert rules == {("tcp", 22, 22, CIDR), ("tcp", 22, 22, sg_id), ("tcp", 1024, 65535, sg_id)}
    # every launch template puts its nodes in that group (moto lists no group for the
    # Instance resource itself, so the head is checked through its launch template)
    for lt in ("WorkerLaunchTemplate", "ServerLaunchTemplate"):
        data = _lt_data(moto, name, lt)
        assert data["SecurityGroupIds"] == [sg_id]
    for i in _instances(moto, name):
        if _tags(i).get("psframe:head") != "true":
            assert [g["GroupId"] for g in i["SecurityGroups"]] == [sg_id]


def _lt_data(moto, name, logical):
    lt_id = _resources(moto, name)[logical]
    versions = _client(moto, "ec2").describe_launch_template_versions(LaunchTemplateId=lt_id)
    return versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]


def _document(doc):
    """A policy document as moto returns it: a dict, JSON, or (from CloudFormation) a repr."""
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(doc)
    except ValueError:
        return ast.literal_eval(doc)


def test_instance_profile_and_policy_scoped_to_the_bucket(moto, stack):
    name = stack["name"]
    iam = _client(moto, "iam")
    res = _resources(moto, name)
    profile = iam.get_instance_profile(InstanceProfileName=res["NodeInstanceProfile"])["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [res["NodeRole"]]
    head = next(i for i in _instances(moto, name) if _tags(i).get("psframe:head") == "true")
    assert head["IamInstanceProfile"]["Arn"] == profile["Arn"]
    for lt in ("WorkerLaunchTemplate", "ServerLaunchTemplate"):
        assert _lt_data(moto, name, lt)["IamInstanceProfile"]["Arn"] == profile["Arn"]
    role = iam.get_role(RoleName=res["NodeRole"])["Role"]
    trust = _document(role["AssumeRolePolicyDocument"])
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]
    statements = []
    for policy in iam.list_role_policies(RoleName=res["NodeRole"])["PolicyNames"]:
        doc = _document(iam.get_role_policy(RoleName=res["NodeRole"], PolicyName=policy)["PolicyDocument"])
        statements += doc["Statement"]
    assert not iam.list_attached_role_policies(RoleName=res["NodeRole"])["AttachedPolicies"]
    allowed = {}
    for s in statements:
        assert s["Effect"] == "Allow"
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        for action in actions:
            assert "*" not in action, action                  # no wildcard actions
            allowed.setdefault(action, []).append(s["Resource"])
    s3 = {a: r for a, r in allowed.items() if a.startswith("s3:")}
    assert s3["s3:ListBucket"] == [f"arn:aws:s3:::{BUCKET}"]
    assert s3["s3:GetObject"] == s3["s3:PutObject"] == [f"arn:aws:s3:::{BUCKET}/*"]
    assert "s3:DeleteBucket" not in s3 and "s3:ListAllMyBuckets" not in s3
    ssm_arn = f"arn:aws:ssm:{REGION}:123456789012:parameter/psframe/{name}/*"
    assert allowed["ssm:GetParameter"] == allowed["ssm:PutParameter"] == [ssm_arn]
    stack_id = _client(moto, "cloudformation").describe_stacks(StackName=name)["Stacks"][0]["StackId"]
    assert allowed["cloudformation:SignalResource"] == [stack_id]
    assert allowed["ec2:DescribeInstances"] == ["*"]        # EC2 offers no narrower resource
    assert set(allowed) == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject",
                            "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
                            "ec2:DescribeInstances", "ec2:CreateTags", "ssm:PutParameter",
                            "ssm:GetParameter", "cloudformation:SignalResource"}


def test_rendered_userdata_is_short_clean_and_calls_bootstrap(moto, stack, tmp_path):
    require(subprocess.run(["which", "shellcheck"], capture_output=True).returncode == 0,
            "executable 'shellcheck'")
    name = stack["name"]
    for lt in ("WorkerLaunchTemplate", "ServerLaunchTemplate"):
        script = base64.b64decode(_lt_data(moto, name, lt)["UserData"]).decode()
        assert not secrets_in(script), script
        assert f'psframe-deploy bootstrap --stack "{name}" --region "{REGION}"' in script
        assert f'--workers "{WORKERS}" --servers "{SERVERS}" --slots "{SLOTS}"' in script
        assert len(script.splitlines()) <= 8
        syntax, check = shell_checks(script, tmp_path, f"{lt}.sh")
        assert syntax.returncode == 0 and check.returncode == 0, syntax.stderr + check.stdout


def _bootstrap(stack, inst, node_dir, *extra):
    return subprocess.Popen(
        ["timeout", "-s", "KILL", "60", os.path.join(os.path.dirname(sys.executable), "psframe-deploy"),
         "bootstrap", "--stack", stack["name"], "--workers", str(WORKERS), "--servers", str(SERVERS),
         "--slots", str(SLOTS), "--instance-id", inst["InstanceId"], "--ssh-user", "",
         "--ssh-dir", str(node_dir / "ssh"), "--state-dir", str(node_dir / "state"),
         "--poll", "0.2", "--timeout", "30", *extra],
        env=stack["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_bootstrap_head_and_worker_share_the_key_and_write_the_hostfile(moto, stack, tmp_path):
    name = stack["name"]
    workers, servers = _ordered(_instances(moto, name))
    head, other = workers[0], workers[2]
    moto.start_recording()
    procs = [_bootstrap(stack, other, tmp_path / "w2", "--no-signal"),    # waits for the key
             _bootstrap(stack, head, tmp_path / "head")]
    outs = [p.communicate(timeout=90)[0] for p in procs]
    moto.stop_recording()
    for out in outs:
        assert not secrets_in(out), out
    # moto has no SignalResource: the head sent it (recorded) and reports the refusal plainly
    assert procs[1].returncode == 2, outs[1]
    assert (f"psframe-deploy: error: CloudFormation did not take the SUCCESS signal for "
            f"{name}/Head") in outs[1], outs[1]
    signals = [c for c in moto.calls() if c["Action"] == "SignalResource"]
    assert signals == [{"Action": "SignalResource", "Version": "2010-05-15", "StackName": name,
                        "LogicalResourceId": "Head", "UniqueId": head["InstanceId"],
                        "Status": "SUCCESS"}], signals
    assert procs[0].returncode == 0, outs[0]
    assert "this node is worker node 2 at" in outs[0] and "fetched the cluster ssh key" in outs[0]
    # the key: a SecureString, the same pair on both nodes, authorised on both, mode 0600
    param = _client(moto, "ssm").describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": [f"/psframe/{name}/cluster-ssh-key"]}])
    assert [p["Type"] for p in param["Parameters"]] == ["SecureString"]
    pubs = []
    for node in ("head", "w2"):
        key = tmp_path / node / "ssh" / "psframe_cluster"
        assert os.stat(key).st_mode & 0o777 == 0o600
        pub = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True,
                             check=True).stdout.split()[:2]
        assert " ".join(pub) in (tmp_path / node / "ssh" / "authorized_keys").read_text()
        pubs.append(pub)
    assert pubs[0] == pubs[1]
    # index tags: the worker tagged itself
    tags = _tags(next(i for i in _instances(moto, name) if i["InstanceId"] == other["InstanceId"]))
    assert tags["psframe:index"] == "2"
    # the hostfile, against the order computed here from the EC2 API
    want = [f"{i['PrivateIpAddress']} slots={SLOTS}" for i in workers] + \
           [f"{i['PrivateIpAddress']} slots=1" for i in servers]
    for node in ("head", "w2"):
        text = (tmp_path / node / "state" / "hostfile").read_text()
        got = [l.split("#")[0].strip() for l in text.splitlines() if l.split("#")[0].strip()]
        assert got == want, text
        state = json.loads((tmp_path / node / "state" / "cluster.json").read_text())
        assert state["identity"] == str(tmp_path / node / "ssh" / "psframe_cluster")


def test_bootstrap_of_a_foreign_instance_is_refused(moto, stack, tmp_path):
    ec2 = _client(moto, "ec2")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    stray = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]
    try:
        p = _bootstrap(stack, stray, tmp_path / "stray", "--no-signal")
        out = p.communicate(timeout=90)[0]
    finally:
        ec2.terminate_instances(InstanceIds=[stray["InstanceId"]])
    assert p.returncode == 2
    assert (f"instance {stray['InstanceId']} is not a node of stack {stack['name']!r}") in out, out


def test_bootstrap_that_cannot_see_every_node_signals_failure_with_the_cause(moto, stack, tmp_path):
    """Told to expect 9 worker nodes, the head gives up after --timeout, says what the EC2 API
    showed, and sends a FAILURE signal for its resource (recorded: moto does not implement it)."""
    head = next(i for i in _instances(moto, stack["name"]) if _tags(i).get("psframe:head") == "true")
    cmd = ["timeout", "-s", "KILL", "60", os.path.join(os.path.dirname(sys.executable), "psframe-deploy"),
           "bootstrap", "--stack", stack["name"], "--workers", "9", "--servers", str(SERVERS),
           "--instance-id", head["InstanceId"], "--ssh-user", "", "--ssh-dir", str(tmp_path / "ssh"),
           "--state-dir", str(tmp_path / "state"), "--poll", "0.2", "--timeout", "1"]
    moto.start_recording()
    result = subprocess.run(cmd, env=stack["env"], capture_output=True, text=True, timeout=90)
    moto.stop_recording()
    assert result.returncode == 2
    assert (f"bootstrap failed: after 1s the EC2 API shows {WORKERS}/9 worker nodes, "
            f"{SERVERS}/{SERVERS} server nodes, 1 head(s) of stack {stack['name']!r}") in result.stderr
    signals = [c for c in moto.calls() if c["Action"] == "SignalResource"]
    assert [(c["LogicalResourceId"], c["UniqueId"], c["Status"]) for c in signals] == [
        ("Head", head["InstanceId"], "FAILURE")]
    assert not (tmp_path / "state").exists()


def test_launch_and_run_name_what_is_missing(tmp_path):
    launch = deploy(["launch", "--state-dir", str(tmp_path / "none"), "--", "-n", "1", "x.py"],
                    env=dict(os.environ))
    assert launch.returncode == 2
    assert f"cannot read {tmp_path / 'none' / 'cluster.json'}" in launch.stdout
    assert "is this the head node of a cluster" in launch.stdout
    run = deploy(["run", "--stack", "s", "--head", "127.0.0.1", "--sync", str(tmp_path / "nodir"),
                  "--", "-n", "1", "x.py"], env=dict(os.environ))
    assert run.returncode == 2 and f"{str(tmp_path / 'nodir')!r} is not a directory" in run.stdout
    empty = deploy(["run", "--stack", "s", "--head", "127.0.0.1"], env=dict(os.environ))
    assert empty.returncode == 2 and "nothing to run" in empty.stdout


def test_up_with_defaults_makes_a_new_vpc_and_only_the_head(moto, template):
    """One worker node and no server nodes: the head alone, in a new VPC whose public subnet
    routes to an internet gateway (the nodes need the AWS APIs)."""
    name = "psf-" + uuid.uuid4().hex[:8]
    result = deploy(["up", "--stack", name, "--bucket", BUCKET, "--ssh-cidr", CIDR, "--workers", "1",
                     "--servers", "0", "--template", template, "--poll", "0.2"],
                    env=aws_env(moto.endpoint), timeout=120)
    assert result.returncode == 0, result.stdout
    res = _resources(moto, name)
    assert "WorkerGroup" not in res and "ServerGroup" not in res
    insts = _instances(moto, name)
    assert [_tags(i).get("psframe:head") for i in insts] == ["true"]
    ec2 = _client(moto, "ec2")
    subnet, = ec2.describe_subnets(SubnetIds=[res["PublicSubnet"]])["Subnets"]
    assert subnet["VpcId"] == res["Vpc"] and subnet["MapPublicIpOnLaunch"] is True
    assert insts[0]["SubnetId"] == subnet["SubnetId"]
    table, = ec2.describe_route_tables(RouteTableIds=[res["RouteTable"]])["RouteTables"]
    assert {(r["DestinationCidrBlock"], r.get("GatewayId")) for r in table["Routes"]} >= {
        ("0.0.0.0/0", res["InternetGateway"])}
    assert "SubnetRoutes" in res       # (moto lists no association on the table itself)
    gw, = ec2.describe_internet_gateways(InternetGatewayIds=[res["InternetGateway"]])["InternetGateways"]
    assert [a["VpcId"] for a in gw["Attachments"]] == [res["Vpc"]]


def test_up_refuses_an_existing_stack_and_half_a_network(moto, stack):
    base = ["--bucket", BUCKET, "--ssh-cidr", CIDR]
    again = deploy(["up", "--stack", stack["name"], *base], env=stack["env"])
    assert again.returncode == 2 and f"stack {stack['name']!r} already exists" in again.stdout
    half = deploy(["up", "--stack", "psf-other", *base, "--vpc", "vpc-12345678"], env=stack["env"])
    assert half.returncode == 2 and "--vpc and --subnet go together" in half.stdout


def test_aws_profile_gives_region_and_credentials(moto, stack, tmp_path):
    """AWS_PROFILE alone (no AWS_REGION, no key variables) reaches the stack; a missing profile
    is named in the error."""
    (tmp_path / "config").write_text(f"[profile psf-test]\nregion = {REGION}\n")
    (tmp_path / "credentials").write_text(
        f"[psf-test]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    env = {k: v for k, v in stack["env"].items() if k not in
           ("AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_PROFILE="psf-test", AWS_CONFIG_FILE=str(tmp_path / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"))
    ok = deploy(["status", "--stack", stack["name"]], env=env)
    assert ok.returncode == 0 and f"stack {stack['name']}: CREATE_COMPLETE" in ok.stdout, ok.stdout
    assert not secrets_in(ok.stdout)
    missing = deploy(["status", "--stack", stack["name"]], env=dict(env, AWS_PROFILE="psf-nope"))
    assert missing.returncode == 2
    assert "The config profile (psf-nope) could not be found; set AWS_PROFILE" in missing.stdout


def test_status_then_down_deletes_everything(moto, stack):
    name = stack["name"]
    status = deploy(["status", "--stack", name], env=stack["env"])
    assert status.returncode == 0 and f"stack {name}: CREATE_COMPLETE" in status.stdout
    assert len(re.findall(r"^  (head|worker|server) ", status.stdout, re.M)) == WORKERS + SERVERS
    down = deploy(["down", "--stack", name, "--poll", "0.2"], env=stack["env"])
    assert down.returncode == 0, down.stdout
    assert f"deleted the cluster ssh key /psframe/{name}/cluster-ssh-key" in down.stdout
    assert f"stack {name} deleted; no instance of it is left" in down.stdout
    assert _instances(moto, name) == []
    assert len(_instances(moto, name, ("terminated",))) == WORKERS + SERVERS
    assert not _client(moto, "ssm").describe_parameters(ParameterFilters=[
        {"Key": "Name", "Values": [f"/psframe/{name}/cluster-ssh-key"]}])["Parameters"]
