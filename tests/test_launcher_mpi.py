"""psframe-launch --launcher mpi: one Open MPI ``mpirun`` (Debian openmpi-bin) starts the
scheduler, the servers and the workers through the launch agent; roles from
OMPI_COMM_WORLD_RANK. The same real job as the other backends, plus a failure."""
import os
import stat
import uuid
import hashlib

import pytest

from conftest import require_exe
from launcher_fixtures import (WORKER, ArgvWatcher, Launch, assert_every_role_ran, assert_no_helpers_left,
                               assert_none_left, check_fails_fast, cmdline_pids, kill_9, new_tag)

pytestmark = pytest.mark.integration


@pytest.fixture
def mpirun():
    return require_exe("mpirun")


def test_real_job_under_mpirun(mpirun, tmp_path):
    secret = "s3cr3t-" + uuid.uuid4().hex
    with ArgvWatcher(secret) as watcher:
        job = Launch(["--launcher", "mpi", "-n", "3", "-s", "2", "--env", "PSF_SECRET", WORKER,
                      "--sleep", "0.1"], new_tag(), cwd=str(tmp_path),
                     env=dict(os.environ, PSF_SECRET=secret))
        try:
            job.wait_for_line(r"STEP 1 OK", 60)
            # the plan (with the job env) sits in a private 0700 dir, 0600 file, while running
            dirs = [p for p in tmp_path.iterdir() if p.name.startswith(".psframe-launch-")]
            assert len(dirs) == 1
            assert stat.S_IMODE(dirs[0].stat().st_mode) == 0o700
            assert stat.S_IMODE((dirs[0] / "plan.json").stat().st_mode) == 0o600
            assert len(cmdline_pids(r"^mpirun ")) >= 1
            rc, _ = job.wait(60)
        finally:
            job.stop()
    assert rc == 0, job.text()
    assert_every_role_ran(job, "127.0.0.1")
    sha = hashlib.sha256(secret.encode()).hexdigest()[:12]
    assert sum(f"secret_sha={sha}" in l for l in job.lines) == 3
    assert watcher.seen == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".psframe-launch-")]
    assert_none_left(job.tag)
    assert_no_helpers_left(job)


def test_worker_failure_under_mpirun(mpirun, tmp_path):
    job = Launch(["--launcher", "mpi", "-n", "3", "-s", "2", WORKER, "--fail-rank", "1"],
                 new_tag(), cwd=str(tmp_path))
    check_fails_fast(job, r"\[worker 1@127.0.0.1\] rank 1 failing on purpose", 7,
                     r"worker 1@127.0.0.1 \(role worker, rank 1, host 127.0.0.1, pid \d+\) exited with code 7")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".psframe-launch-")]


def test_worker_kill_9_under_mpirun(mpirun, tmp_path):
    job = Launch(["--launcher", "mpi", "-n", "3", "-s", "2", WORKER, "--steps", "500", "--sleep", "0.02"],
                 new_tag(), cwd=str(tmp_path))
    kill = kill_9(job.tag, PSFRAME_ROLE="worker", PSFRAME_RANK=1)
    check_fails_fast(job, r"\[worker 1@127.0.0.1\] STEP 3 OK", 137,
                     lambda: rf"worker 1@127.0.0.1 .*pid {kill.pid}\) killed by SIGKILL", act=kill)
