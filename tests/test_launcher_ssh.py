"""psframe-launch over ssh: three network-namespace "hosts", each with its own sshd (Debian
openssh-server) and hostname, bridged in a private namespace. The launcher itself runs inside the
first host's namespace, so no packet ever leaves for the root namespace's default route."""
import hashlib
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from conftest import require, require_exe
from launcher_fixtures import (WORKER, ArgvWatcher, Launch, assert_no_helpers_left, assert_none_left,
                               check_fails_fast, cmdline_pids, kill_9, new_tag, pids_with_env,
                               tagged_pids)

pytestmark = pytest.mark.integration

ADDRS = ["10.200.0.11", "10.200.0.12", "10.200.0.13"]
SSH_PORT = 2222
LIFETIME = 300   # seconds: sshd dies by itself even if this process is killed


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


@pytest.fixture(scope="module")
def netns_hosts(tmp_path_factory):
    require(os.geteuid() == 0, "root (to create network namespaces)")
    require_exe("ip")
    require_exe("ssh")
    require(os.path.exists("/usr/sbin/sshd"), "/usr/sbin/sshd (openssh-server)")
    d = tmp_path_factory.mktemp("ssh")
    uid = uuid.uuid4().hex[:6]
    bridge, names = f"pl{uid}-br", [f"pl{uid}-h{i}" for i in (1, 2, 3)]
    procs = []
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for key in ("hostkey", "id_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                           check=True, timeout=20)
        (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        _ip("netns", "add", bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(names, ADDRS), 1):
            _ip("netns", "add", ns)
            _ip("link", "add", f"veth{i}", "netns", ns, "type", "veth", "peer", "name", f"port{i}",
                "netns", bridge)
            _ip("-n", bridge, "link", "set", f"port{i}", "master", "br0")
            _ip("-n", bridge, "link", "set", f"port{i}", "up")
            _ip("-n", ns, "link", "set", f"veth{i}", "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            conf = d / f"sshd_{ns}.conf"
            conf.write_text(f"Port {SSH_PORT}\nListenAddress {addr}\nHostKey {d}/hostkey\n"
                            f"PidFile {d}/sshd_{ns}.pid\nPermitRootLogin prohibit-password\n"
                            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                            "KbdInteractiveAuthentication no\n"
                            f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n"
                            "PrintMotd no\n")
            log = open(d / f"sshd_{ns}.log", "w")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
                 f"hostname {ns}; exec timeout {LIFETIME} /usr/sbin/sshd -D -e -f {conf}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        deadline = time.monotonic() + 10
        for ns in names:
            while ":2222" not in _ip("netns", "exec", ns, "ss", "-ltn").stdout:
                assert time.monotonic() < deadline, (d / f"sshd_{ns}.log").read_text()
                time.sleep(0.05)
        # the rule above all: traffic to the test hosts stays on the test bridge
        for addr in ADDRS[1:]:
            route = _ip("netns", "exec", names[0], "ip", "route", "get", addr).stdout
            assert "dev eth0" in route and "via" not in route, route
        hostfile = d / "hostfile"
        hostfile.write_text("# three netns hosts, 2 workers each\n"
                            + "".join(f"{a} slots=2\n" for a in ADDRS))
        yield {"names": names, "dir": d, "hostfile": str(hostfile),
               "ssh_args": ["--ssh-port", str(SSH_PORT), "--ssh-identity", str(d / "id_ed25519"),
                            "--ssh-option", "StrictHostKeyChecking=no",
                            "--ssh-option", "UserKnownHostsFile=/dev/null",
                            "--ssh-option", "LogLevel=ERROR"]}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)   # `timeout` forwards it to sshd
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ns in names + [bridge]:
            _ip("netns", "del", ns, check=False)


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
