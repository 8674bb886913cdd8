"""psframe-launch inside a Slurm allocation: a single-node Slurm (Debian slurm-wlm + munge)
started by the fixture on free ports with a private munge socket, so it never touches a
system-wide one; ``salloc`` runs psframe-launch, which detects Slurm and starts the job via srun."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import require
from launcher_fixtures import (WORKER, Launch, assert_every_role_ran, assert_no_helpers_left, assert_none_left,
                               check_fails_fast, cmdline_pids, kill_9, new_tag)
from psframe.transport.addresses import free_port

pytestmark = pytest.mark.integration

LIFETIME = 300   # seconds: every daemon dies by itself even if this process is killed


def _wait(pred, timeout, what, logs=()):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            text = "\n".join(f"--- {p}\n{open(p).read()[-2000:]}" for p in logs if os.path.exists(p))
            raise AssertionError(f"{what} not ready within {timeout}s\n{text}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def slurm():
    require(os.geteuid() == 0, "root (to run slurmctld/slurmd/munged)")
    for exe in ("munged", "slurmctld", "slurmd", "salloc", "srun", "sinfo"):
        require(shutil.which(exe) or os.path.exists(f"/usr/sbin/{exe}"), f"executable {exe!r}")
    require(os.path.exists("/etc/munge/munge.key"), "/etc/munge/munge.key (munge package)")
    # not under pytest's 0700 tmp: the munge user must reach its socket directory
    d = tempfile.mkdtemp(prefix="psf-slurm-")
    os.chmod(d, 0o755)
    m = os.path.join(d, "munge")
    os.makedirs(m)
    shutil.chown(m, "munge", "munge")
    socket_path = os.path.join(m, "munge.socket")
    procs = []

    def start(cmd, log):
        with open(os.path.join(d, log), "w") as f:
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    try:
        start(["runuser", "-u", "munge", "--", "timeout", str(LIFETIME), "/usr/sbin/munged", "-F",
               f"--socket={socket_path}", f"--pid-file={m}/munged.pid",
               f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"], "munged.out")
        _wait(lambda: subprocess.run(f"munge -n -S {socket_path} | unmunge -S {socket_path}",
                                     shell=True, capture_output=True, timeout=5).returncode == 0,
              10, "munged", [f"{d}/munged.out"])
        for sub in ("state", "spool", "log"):
            os.makedirs(os.path.join(d, sub))
        ctld_port, d_port = free_port("127.0.0.1"), free_port("127.0.0.1")
        conf = os.path.join(d, "slurm.conf")
        with open(conf, "w") as f:
            f.write(f"""ClusterName=psf{os.getpid() % 100000}
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MessageTimeout=5
KillWait=5
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=30 State=UP
""")
        env = dict(os.environ, SLURM_CONF=conf)
        start(["timeout", str(LIFETIME), "/usr/sbin/slurmctld", "-D", "-i", "-f", conf], "slurmctld.out")
        start(["timeout", str(LIFETIME), "/usr/sbin/slurmd", "-D", "-N", "localhost", "-f", conf], "slurmd.out")

        def idle():
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True,
                               text=True, timeout=10)
            return r.stdout.strip().startswith("idle")
        _wait(idle, 30, "slurm node", [f"{d}/slurmctld.out", f"{d}/slurmd.out",
                                       f"{d}/log/slurmctld.log", f"{d}/log/slurmd.log"])
        yield {"env": env, "dir": d}
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)   # `timeout`/`runuser` forward it to the daemon
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(d, ignore_errors=True)


def _salloc(slurm, args, cwd, timeout=90):
    env = {k: v for k, v in slurm["env"].items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    return Launch(args, new_tag(), timeout=timeout, cwd=cwd, env=env,
                  prefix=("salloc", "--quiet", "-N1", "-n2", "-t", "2"))


def test_real_job_inside_allocation_uses_srun(slurm, tmp_path):
    job = _salloc(slurm, ["-n", "3", "-s", "2", WORKER], str(tmp_path))
    try:
        job.wait_for_line(r"STEP 1 OK", 60)
        assert cmdline_pids(r"^srun .*psframe_launcher\.agent") != []
        rc, _ = job.wait(90)
    finally:
        job.stop()
    assert rc == 0, job.text()
    assert_every_role_ran(job, "localhost")
    assert_none_left(job.tag)
    assert_no_helpers_left(job)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".psframe-launch-")]


def test_worker_failure_inside_allocation(slurm, tmp_path):
    job = _salloc(slurm, ["-n", "3", "-s", "2", WORKER, "--fail-rank", "1"], str(tmp_path))
    # salloc returns the exit code of the command it ran: the launcher's
    check_fails_fast(job, r"\[worker 1@localhost\] rank 1 failing on purpose", 7,
                     r"worker 1@localhost \(role worker, rank 1, host localhost, pid \d+\) exited with code 7")


def test_worker_kill_9_inside_allocation(slurm, tmp_path):
    job = _salloc(slurm, ["-n", "3", "-s", "2", WORKER, "--steps", "500", "--sleep", "0.02"],
                  str(tmp_path))
    kill = kill_9(job.tag, PSFRAME_ROLE="worker", PSFRAME_RANK=1)
    check_fails_fast(job, r"\[worker 1@localhost\] STEP 3 OK", 137,
                     lambda: rf"worker 1@localhost .*pid {kill.pid}\) killed by SIGKILL", act=kill)
