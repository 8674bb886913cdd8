"""psframe-launch over ssh: three network-namespace "hosts", each with its own sshd (Debian
openssh-server) and hostname, bridged in a private namespace. The launcher itself runs inside the
first host's namespace, so no packet ever leaves for the root namespace's default route."""
import hashlib
import os
import re
import signal
import subprocess
import uuid

import pytest

from conftest import require, require_exe
from psframe.bench import netns
from launcher_fixtures import (WORKER, ArgvWatcher, Launch, assert_no_helpers_left, assert_none_left,
                               check_fails_fast, cmdline_pids, kill_9, new_tag, pids_with_env,
                               tagged_pids)

pytestmark = pytest.mark.integration

SUBNET = "10.200.0"
ADDRS = [f"{SUBNET}.{11 + i}" for i in range(3)]
LIFETIME = 300   # seconds: sshd dies by itself even if this process is killed


@pytest.fixture(scope="module")
def netns_hosts(tmp_path_factory):
    missing = netns.missing_requirements()
    require(not missing, "; ".join(missing))
    with netns.NetnsHosts(3, slots=2, workdir=tmp_path_factory.mktemp("ssh"), lifetime=LIFETIME,
                          subnet=SUBNET, prefix="pl") as hosts:
        assert hosts.addresses == ADDRS
        yield hosts
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    assert not [n for n in hosts.names + [hosts.bridge] if n in listed], listed


def _launch(hosts, *args, tag=None, timeout=90, env=None):
    return Launch(["-H", hosts.hostfile, *hosts.launch_args, *args], tag or new_tag(),
                  timeout=timeout, prefix=hosts.exec_prefix(0), env=env)


def test_real_job_over_three_ssh_hosts(netns_hosts, tmp_path):
    secret = "s3cr3t-" + uuid.uuid4().hex
    with ArgvWatcher(secret) as watcher:
        # a bare --env KEY passes the launcher's value: the secret is in no argv, not even ours
        job = _launch(netns_hosts, "-n", "6", "-s", "3", "--env", "PSF_SECRET", WORKER,
                      env=dict(os.environ, PSF_SECRET=secret))
        try:
            rc, elapsed = job.wait(90)
        finally:
            job.stop()
    assert rc == 0, job.text()
    text = job.text()
    for rank in range(6):
        host = ADDRS[rank // 2]
        assert f"[worker {rank}@{host}] DONE rank={rank}" in job.lines, text
        assert re.search(rf"\[worker {rank}@{re.escape(host)}\] worker rank={rank} .*"
                         rf"local_rank={rank % 2}/2 host={re.escape(host)}", text), text
    for s in range(3):
        assert any(l.startswith(f"[server {s}@{ADDRS[s]}]") for l in job.lines), text
    # the processes really ran on the namespaces' hosts (hostname = namespace name)
    names = netns_hosts.names
    for rank in range(6):
        assert f"[worker {rank}@{ADDRS[rank // 2]}] hostname={names[rank // 2]}" in job.lines, text
    # the secret reached every worker through stdin, and no argv ever held it
    sha = hashlib.sha256(secret.encode()).hexdigest()[:12]
    assert sum(f"secret_sha={sha}" in l for l in job.lines) == 6, text
    assert watcher.scans > 5 and watcher.seen == [], watcher.seen
    assert_none_left(job.tag)
    assert_no_helpers_left(job)


def test_clean_job_over_ssh_ends_without_an_error(netns_hosts):
    """A clean multi-host run prints no interpreter error at shutdown (the launch agents once
    died in ``Fatal Python error: _enter_buffered_busy`` while a thread still read stdin)."""
    job = _launch(netns_hosts, "-n", "4", "-s", "2", WORKER)
    try:
        rc, _ = job.wait(90)
    finally:
        job.stop()
    text = job.text()
    assert rc == 0, text
    for rank in range(4):
        assert f"[worker {rank}@{ADDRS[rank // 2]}] DONE rank={rank}" in job.lines, text
    for bad in ("Fatal Python error", "Traceback", "Exception ignored"):
        assert bad not in text, text
    assert_none_left(job.tag)
    assert_no_helpers_left(job)


def test_remote_worker_failure_stops_every_host(netns_hosts):
    job = _launch(netns_hosts, "-n", "6", "-s", "3", WORKER, "--fail-rank", "3", "--fail-code", "7")
    check_fails_fast(job, r"\[worker 3@10\.200\.0\.12\] rank 3 failing on purpose", 7,
                     r"worker 3@10\.200\.0\.12 \(role worker, rank 3, host 10\.200\.0\.12, "
                     r"pid \d+\) exited with code 7")


def test_remote_server_kill_9(netns_hosts):
    job = _launch(netns_hosts, "-n", "6", "-s", "3", WORKER, "--steps", "200", "--sleep", "0.05")
    kill = kill_9(job.tag, PSFRAME_ROLE="server", PSFRAME_SERVER_RANK=2)
    check_fails_fast(job, r"\[worker 5@10\.200\.0\.13\] STEP 2 OK", 137,
                     lambda: rf"server 2@10\.200\.0\.13 .*pid {kill.pid}\) killed by SIGKILL", act=kill)


def test_launcher_kill_9_leaves_no_descendant_on_any_host(netns_hosts):
    # every worker started two `sleep 300`, one of them in a session of its own: the agents
    # (child subreapers) must take both down when the ssh connection dies with the launcher
    job = _launch(netns_hosts, "-n", "6", "-s", "3", WORKER, "--steps", "1000", "--sleep", "0.05",
                  "--spawn-children")
    try:
        job.wait_for_line(r"\[worker 5@10\.200\.0\.13\] STEP 2 OK", 60)
        assert len(pids_with_env(job.tag, PSFRAME_ROLE="worker")) == 6 * 3   # and the sleeps
        launcher = [p for p in cmdline_pids(r"^\S*python\S* \S*/psframe-launch ")
                    if p in tagged_pids(job.tag)]
        assert len(launcher) == 1
        os.kill(launcher[0], signal.SIGKILL)
        job.wait(30)
        assert_none_left(job.tag, within=10)
    finally:
        job.stop()


def test_mpirun_across_the_ssh_hosts(netns_hosts):
    """--launcher mpi -H: mpirun's --host list puts every rank on its planned host."""
    require_exe("mpirun")
    d = netns_hosts.dir
    env = dict(os.environ,
               OMPI_MCA_plm_rsh_agent=f"ssh -p {netns.SSH_PORT} -i {netns_hosts.identity} -o BatchMode=yes "
                                      "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                      "-o LogLevel=ERROR",
               OMPI_MCA_oob_tcp_if_include=netns_hosts.subnet,
               OMPI_MCA_btl_tcp_if_include=netns_hosts.subnet)
    job = Launch(["--launcher", "mpi", "-H", netns_hosts.hostfile, "-n", "6", "-s", "3", WORKER],
                 new_tag(), timeout=90, env=env, cwd=str(d), prefix=netns_hosts.exec_prefix(0))
    try:
        rc, _ = job.wait(90)
    finally:
        job.stop()
    assert rc == 0, job.text()
    names = netns_hosts.names
    for rank in range(6):
        assert f"[worker {rank}@{ADDRS[rank // 2]}] DONE rank={rank}" in job.lines, job.text()
    # ranks on hosts 2 and 3 came through orted over ssh (their own hostnames); host 1 is
    # mpirun's own namespace, which has no UTS namespace of its own
    for rank in range(2, 6):
        assert f"[worker {rank}@{ADDRS[rank // 2]}] hostname={names[rank // 2]}" in job.lines, job.text()
    assert_none_left(job.tag)
    assert_no_helpers_left(job)


def test_unreachable_host_fails_fast_with_ssh_words(netns_hosts):
    args = [a if a != str(netns.SSH_PORT) else "2223" for a in netns_hosts.launch_args]   # nobody there
    job = Launch(["-H", netns_hosts.hostfile, *args, "-n", "6", WORKER], new_tag(), timeout=60,
                 prefix=netns_hosts.exec_prefix(0))
    try:
        rc, elapsed = job.wait(60)
    finally:
        job.stop()
    assert rc == 255, job.text()             # ssh's own code: the process never started
    assert elapsed < 15
    report = "\n".join(job.err_lines)
    assert re.search(r"ROOT CAUSE: \S+@.*exited with code 255 \(its host connection", report), report
    assert re.search(r"\| \(ssh\) .*port 2223: Connection refused", report), report
    assert_none_left(job.tag)


def test_rogue_client_across_hosts_with_curve(netns_hosts, tmp_path):
    """The security tests' rogue client, run from the first host's namespace against a CURVE
    job over the three ssh hosts: no credentials, another job's, a stolen worker credential
    claiming another worker or a server: all refused; the weights stay exact."""
    import json
    import sys

    from psframe.transport import credentials
    from test_security_rogue import STEPS, WORKER as SECURE_WORKER, check_refused, stats_of, wait_for
    here = os.path.dirname(os.path.abspath(__file__))
    job = _launch(netns_hosts, "-n", "6", "-s", "3", "--security", "curve", SECURE_WORKER,
                  str(tmp_path), str(STEPS), timeout=120)
    try:
        wait_for(tmp_path / "stolen", job)
        wait_for(tmp_path / "info.json", job)
        info = json.loads((tmp_path / "info.json").read_text())
        assert [a.split("//")[1].split(":")[0] for a in info["servers"]] == ADDRS
        credentials.write_file(str(tmp_path / "other"),
                               credentials.generate("curve", credentials.identities(6, 3))["worker:1"])

        def rogue(creds, claim):
            out = subprocess.run([*netns_hosts.exec_prefix(0), sys.executable,
                                  os.path.join(here, "rogue_client.py"), str(tmp_path / "info.json"),
                                  creds, claim], capture_output=True, text=True, timeout=60,
                                 cwd=here)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout.strip().splitlines()[-1])
        check_refused(rogue("-", "worker:1"), "none")
        check_refused(rogue(str(tmp_path / "other"), "worker:1"), "other job")
        for claim in ("worker:0", "server:2"):
            check_refused(rogue(str(tmp_path / "stolen"), claim), "stolen")
        (tmp_path / "go").write_text("")
        rc, _ = job.wait(90)
    finally:
        job.stop()
    assert rc == 0, job.text()
    for rank in range(6):
        assert any(f"EXACT rank={rank}" in l for l in job.lines), job.text()
    for s in stats_of(job):
        assert s["refused_messages"] >= 2 * 15 and s["refused_connections"] >= 2, s
    assert_none_left(job.tag)
