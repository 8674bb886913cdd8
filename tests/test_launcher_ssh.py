"""psframe-launch over ssh: three network-namespace "hosts", each with its own sshd (Debian
openssh-server) and hostname, bridged in a private namespace. The launcher itself runs inside the
first host's namespace, so no packet ever leaves for the root namespace's default route."""
import hashlib
import os
import re
import uuid

import pytest

from conftest import require_exe
from launcher_fixtures import (ADDRS, SSH_PORT, WORKER, ArgvWatcher, Launch, assert_no_helpers_left, assert_none_left,
                               check_fails_fast, kill_9, netns_hosts, new_tag)

pytestmark = pytest.mark.integration

def _launch(hosts, *args, tag=None, timeout=90, env=None):
    return Launch(["-H", hosts["hostfile"], *hosts["ssh_args"], *args], tag or new_tag(),
                  timeout=timeout, prefix=("ip", "netns", "exec", hosts["names"][0]), env=env)


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
    names = netns_hosts["names"]
    for rank in range(6):
        assert f"[worker {rank}@{ADDRS[rank // 2]}] hostname={names[rank // 2]}" in job.lines, text
    # the secret reached every worker through stdin, and no argv ever held it
    sha = hashlib.sha256(secret.encode()).hexdigest()[:12]
    assert sum(f"secret_sha={sha}" in l for l in job.lines) == 6, text
    assert watcher.scans > 5 and watcher.seen == [], watcher.seen
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


def test_mpirun_across_the_ssh_hosts(netns_hosts):
    """--launcher mpi -H: mpirun's --host list puts every rank on its planned host."""
    require_exe("mpirun")
    d = netns_hosts["dir"]
    env = dict(os.environ,
               OMPI_MCA_plm_rsh_agent=f"ssh -p {SSH_PORT} -i {d}/id_ed25519 -o BatchMode=yes "
                                      "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                      "-o LogLevel=ERROR",
               OMPI_MCA_oob_tcp_if_include="10.200.0.0/24", OMPI_MCA_btl_tcp_if_include="10.200.0.0/24")
    job = Launch(["--launcher", "mpi", "-H", netns_hosts["hostfile"], "-n", "6", "-s", "3", WORKER],
                 new_tag(), timeout=90, env=env, cwd=str(d),
                 prefix=("ip", "netns", "exec", netns_hosts["names"][0]))
    try:
        rc, _ = job.wait(90)
    finally:
        job.stop()
    assert rc == 0, job.text()
    names = netns_hosts["names"]
    for rank in range(6):
        assert f"[worker {rank}@{ADDRS[rank // 2]}] DONE rank={rank}" in job.lines, job.text()
    # ranks on hosts 2 and 3 came through orted over ssh (their own hostnames); host 1 is
    # mpirun's own namespace, which has no UTS namespace of its own
    for rank in range(2, 6):
        assert f"[worker {rank}@{ADDRS[rank // 2]}] hostname={names[rank // 2]}" in job.lines, job.text()
    assert_none_left(job.tag)
    assert_no_helpers_left(job)


def test_unreachable_host_fails_fast_with_ssh_words(netns_hosts):
    args = [a if a != str(SSH_PORT) else "2223" for a in netns_hosts["ssh_args"]]   # nobody there
    job = Launch(["-H", netns_hosts["hostfile"], *args, "-n", "6", WORKER], new_tag(), timeout=60,
                 prefix=("ip", "netns", "exec", netns_hosts["names"][0]))
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
