"""End to end on simulated nodes: moto_server (CloudFormation, EC2, IAM, SSM) runs in an "aws"
network namespace that also plays your machine; ``psframe-deploy up`` creates the stack there;
then every instance moto created becomes a namespace with the instance's private address and
its own sshd, ``psframe-deploy bootstrap`` runs inside each (instance id by flag: there is no
metadata service), and ``psframe-deploy run`` trains examples/train_mlp.py across the
namespaces with psframe-launch over ssh. Nothing is added to the root namespace: every client
runs inside a namespace, so no packet leaves for the root namespace's default route."""
import json
import os
import subprocess
import uuid

import pytest

from conftest import EXAMPLES, require, require_exe
from deploy_fixtures import DEPLOY, aws_env, deploy, moto_template, secrets_in
from launcher_fixtures import WORKER, ArgvWatcher
from psframe.bench.netns_bridge import SSHD, NetnsBridge, exec_prefix, keygen
from s3_fixtures import MOTO, SECRET, MotoServer
from test_examples_mlp import EPOCHS, GLOBAL_BATCH, check_outputs, rank0_lines, serial  # noqa: F401

pytestmark = pytest.mark.integration

AWS_ADDR = "10.0.1.250"      # in the template's new-VPC subnet 10.0.1.0/24, clear of moto's .4, .5, ...
SSH_PORT = 2222
WORKERS, SERVERS, SLOTS = 2, 1, 2
SSH_CLIENT = ["--ssh-option", "StrictHostKeyChecking=no", "--ssh-option", "UserKnownHostsFile=/dev/null",
              "--ssh-option", "LogLevel=ERROR"]


def _bootstrap_cmd(c, node, *extra):
    return [*exec_prefix(node["ns"]), "timeout", "-s", "KILL", "90", DEPLOY, "bootstrap",
            "--stack", c["stack"], "--workers", str(WORKERS), "--servers", str(SERVERS),
            "--slots", str(SLOTS), "--ssh-user", "", "--ssh-dir", node["ssh_dir"],
            "--state-dir", node["state_dir"], "--poll", "0.2", "--timeout", "60", *extra]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require(os.geteuid() == 0, "root (to create network namespaces)")
    for exe in ("ip", "ssh", "ssh-keygen"):
        require_exe(exe)
    require(os.path.exists(SSHD), f"{SSHD} (openssh-server)")
    require(os.path.exists(MOTO), "moto_server (pip install 'moto[server]')")
    d = tmp_path_factory.mktemp("deploy-e2e")
    net = NetnsBridge(f"pd{uuid.uuid4().hex[:6]}", d)
    moto = None
    try:
        aws_ns = net.add_host("aws", AWS_ADDR)
        moto = MotoServer(str(d), host=AWS_ADDR, prefix=net.exec_prefix(aws_ns))
        env = aws_env(moto.endpoint)
        c = {"dir": d, "aws_ns": aws_ns, "env": env, "stack": "psf-" + uuid.uuid4().hex[:8]}
        up = deploy(["up", "--stack", c["stack"], "--bucket", "psframe-data", "--ssh-cidr",
                     f"{AWS_ADDR}/32", "--workers", str(WORKERS), "--servers", str(SERVERS),
                     "--slots", str(SLOTS), "--template", moto_template(d), "--poll", "0.2"],
                    env=env, prefix=net.exec_prefix(aws_ns))
        assert up.returncode == 0, up.stdout
        c["up"] = up.stdout
        status = deploy(["status", "--stack", c["stack"], "--json"], env=env,
                        prefix=net.exec_prefix(aws_ns))
        assert status.returncode == 0, status.stdout
        c["nodes"] = nodes = json.loads(status.stdout)["nodes"]
        assert len(nodes) == WORKERS + SERVERS and nodes[0]["head"]
        # your key pair, which EC2 would put into the login user's authorized_keys
        c["user_key"] = keygen(d / "user_key")
        for i, node in enumerate(nodes):
            node_dir = d / f"node{i}"
            node["ssh_dir"], node["state_dir"] = str(node_dir / "ssh"), str(node_dir / "state")
            os.makedirs(node["ssh_dir"], mode=0o700)
            node["ns"] = net.add_host(f"n{i}", node["private_ip"])
            net.start_sshd(node["ns"], node["private_ip"],
                           os.path.join(node["ssh_dir"], "authorized_keys"), port=SSH_PORT)
        with open(os.path.join(nodes[0]["ssh_dir"], "authorized_keys"), "w") as f:
            f.write(open(c["user_key"] + ".pub").read())
        net.wait_sshd()
        addrs = [n["private_ip"] for n in nodes]
        net.check_on_link(aws_ns, addrs)
        for node in nodes:
            net.check_on_link(node["ns"], addrs + [AWS_ADDR])
        # every node bootstraps at once, as at boot; the others wait for the head's key
        with ArgvWatcher("PRIVATE KEY") as key_watch, ArgvWatcher(SECRET) as secret_watch:
            procs = [subprocess.Popen(_bootstrap_cmd(c, n, "--instance-id", n["instance_id"],
                                                     "--no-signal"),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True) for n in reversed(nodes)]
            outs = [p.communicate(timeout=120)[0] for p in procs]
        c["bootstrap"] = list(zip([p.returncode for p in procs], reversed(outs)))[::-1]
        c["bootstrap"] = list(zip(reversed([p.returncode for p in procs]), reversed(outs)))
        c["argv_seen"] = key_watch.seen + secret_watch.seen
        c["watch_scans"] = min(key_watch.scans, secret_watch.scans)
        yield c
    finally:
        if moto is not None:
            moto.stop()
        net.close()


def test_bootstrap_in_every_namespace_writes_the_hostfile_and_shares_the_key(cluster):
    nodes = cluster["nodes"]
    for node, (rc, out) in zip(nodes, cluster["bootstrap"]):
        assert rc == 0, out
        assert f"at {node['private_ip']}" in out and out.rstrip().endswith("done"), out
        assert not secrets_in(out), out
    assert "stored the cluster ssh key in SSM SecureString" in cluster["bootstrap"][0][1]
    for _, out in cluster["bootstrap"][1:]:
        assert "fetched the cluster ssh key" in out
    with open(os.path.join(nodes[0]["state_dir"], "hostfile")) as f:
        hosts = [l.split("#")[0].split() for l in f if l.split("#")[0].strip()]
    want = [[n["private_ip"], f"slots={SLOTS if n['role'] == 'worker' else 1}"] for n in nodes]
    assert hosts == want
    assert cluster["watch_scans"] > 3 and cluster["argv_seen"] == []
    assert not secrets_in(cluster["up"])


def test_bootstrap_without_metadata_asks_for_the_instance_id(cluster):
    node = cluster["nodes"][1]
    # inside a node namespace the metadata address has no route at all: nothing leaves
    route = subprocess.run([*exec_prefix(node["ns"]), "ip", "route", "get",
                            "169.254.169.254"], capture_output=True, text=True, timeout=20)
    assert route.returncode != 0 and "unreachable" in route.stderr, route
    result = subprocess.run(_bootstrap_cmd(cluster, node, "--no-signal"), env=cluster["env"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no EC2 instance metadata at http://169.254.169.254" in result.stderr
    assert "pass --instance-id or set PSFRAME_INSTANCE_ID" in result.stderr


def _run(cluster, *launch_args, timeout=240, sync=()):
    head = cluster["nodes"][0]
    return deploy(["run", "--stack", cluster["stack"], "--private", "--user", "root", *sync,
                   "-i", cluster["user_key"], "--ssh-port", str(SSH_PORT), *SSH_CLIENT,
                   "--state-dir", head["state_dir"], "--remote-command", DEPLOY, "--",
                   "--ssh-port", str(SSH_PORT), *launch_args],
                  env=cluster["env"], prefix=exec_prefix(cluster["aws_ns"]),
                  timeout=timeout)


def test_run_trains_the_mlp_across_the_nodes_to_the_serial_accuracy(cluster, digits, serial,
                                                                     tmp_path):
    """The examples directory goes to every node with --sync (the namespaces share one file
    system, so this shows the copies run, not that they land on separate disks)."""
    out_dir, job = str(tmp_path / "out"), str(tmp_path / "job")
    with ArgvWatcher("PRIVATE KEY") as watch:
        result = _run(cluster, "-n", "4", "-s", "3", os.path.join(job, "train_mlp.py"),
                      "--data", digits, "--out", out_dir, "--epochs", str(EPOCHS),
                      "--batch-size", str(GLOBAL_BATCH // 4), sync=("--sync", f"{EXAMPLES}:{job}"))
    out = result.stdout
    assert result.returncode == 0, out[-4000:]
    assert f"copied {EXAMPLES} to the head's {job}" in out
    assert f"psframe-deploy launch: copied {job} to every node" in out
    with open(os.path.join(job, "train_mlp.py")) as a, open(os.path.join(EXAMPLES, "train_mlp.py")) as b:
        assert a.read() == b.read()
    assert watch.seen == [] and not secrets_in(out)
    # rank 0's own lines (not its ssh connection's stderr)
    metrics = check_outputs(out_dir, [l for l in rank0_lines(out, True) if not l.startswith("(ssh)")])
    assert metrics["kvstore"] == "dist_sync" and metrics["num_workers"] == 4
    assert metrics["global_batch"] == serial["global_batch"] == GLOBAL_BATCH
    acc = metrics["final_test_acc"]
    assert acc >= 0.95, metrics["test_acc"]
    assert abs(acc - serial["final_test_acc"]) <= 0.01, (acc, serial["final_test_acc"])
    # workers filled the worker nodes' slots (2 each); a server on every node, and every
    # worker's pushes of all 4 keys reached the servers at every step
    ips = [n["private_ip"] for n in cluster["nodes"]]
    steps = EPOCHS * metrics["steps_per_epoch"]
    for rank in range(4):
        assert f"[worker {rank}@{ips[rank // 2]}] rank {rank}: trained on {steps} batches" in out, \
            out[-3000:]
    pushes = metrics["server_pushes"]
    assert len(pushes) == 3 and all(len(p) == 4 for p in pushes), pushes
    assert [sum(server[w] for server in pushes) for w in range(4)] == [4 * steps] * 4, pushes


def test_run_returns_the_jobs_exit_status(cluster):
    result = _run(cluster, "-n", "2", WORKER, "--fail-rank", "1", "--fail-code", "7", timeout=120)
    assert result.returncode == 7, result.stdout[-3000:]
    assert f"[worker 1@{cluster['nodes'][0]['private_ip']}] rank 1 failing on purpose" in result.stdout
