"""psframe-launch with the local backend running REAL jobs (scheduler, servers, workers of
psframe's core): success, and every failure case of docs/operations.md, each ending fast with the right exit
code and report and nothing left running."""
import io
import logging
import os
import re
import signal
import socket
import time

import pytest

from launcher_fixtures import (BIN, WORKER, Launch, assert_none_left, cmdline_pids, new_tag,
                               pids_with_env, tagged_pids)

pytestmark = pytest.mark.integration


def _launch(*args, timeout=60, **kw):
    tag = new_tag()
    return Launch(["-n", "3", "-s", "2", *args], tag, timeout=timeout, **kw)


def _report(job):
    return "\n".join(job.err_lines)


def test_real_job_runs_and_exits_zero(tmp_path):
    job = _launch("--log-dir", str(tmp_path / "logs"), WORKER)
    try:
        rc, elapsed = job.wait(60)
        assert rc == 0, job.text()
        for rank in range(3):
            assert f"[worker {rank}@127.0.0.1] DONE rank={rank}" in job.lines
            assert sum(f"[worker {rank}@127.0.0.1] STEP" in l for l in job.lines) == 5
        assert any(l.startswith("[scheduler@127.0.0.1]") for l in job.lines)
        assert any(l.startswith("[server 1@127.0.0.1]") for l in job.lines)
        # local ranks from the placement
        assert any("[worker 2@127.0.0.1] worker rank=2" in l and "local_rank=2/3" in l for l in job.lines)
        logs = sorted(os.listdir(tmp_path / "logs"))
        assert "worker-1-at-127.0.0.1.log" in logs and "scheduler-at-127.0.0.1.log" in logs
        assert "DONE rank=1" in (tmp_path / "logs" / "worker-1-at-127.0.0.1.log").read_text()
        assert_none_left(job.tag)
    finally:
        job.stop()


def test_worker_exit_code_stops_job_fast():
    job = _launch(WORKER, "--fail-rank", "1", "--fail-step", "3", "--fail-code", "7")
    try:
        job.wait_for_line(r"\[worker 1@127.0.0.1\] rank 1 failing on purpose", 30)
        failed_at = time.monotonic()
        rc, _ = job.wait(30)
        took = time.monotonic() - failed_at
        assert rc == 7, job.text()
        assert took < 10, f"launcher took {took:.1f}s after the worker's exit"
        report = _report(job)
        assert re.search(r"ROOT CAUSE: worker 1@127.0.0.1 \(role worker, rank 1, host 127.0.0.1, "
                         r"pid \d+\) exited with code 7", report), report
        assert "| rank 1 failing on purpose at step 3 with code 7" in report
        assert "worker 0@127.0.0.1" in report.split("stopped by the launcher:")[1]
        assert_none_left(job.tag)
    finally:
        job.stop()


@pytest.mark.parametrize("role, index", [("worker", 1), ("server", 1)])
def test_kill_9_stops_job_fast(role, index):
    job = _launch(WORKER, "--steps", "100", "--sleep", "0.05")
    try:
        job.wait_for_line(r"\[worker 1@127.0.0.1\] STEP 2 OK", 30)
        extra = {"PSFRAME_RANK": index} if role == "worker" else {"PSFRAME_SERVER_RANK": index}
        pids = pids_with_env(job.tag, PSFRAME_ROLE=role, **extra)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        rc, _ = job.wait(30)
        took = time.monotonic() - killed_at
        assert rc == 128 + 9, job.text()
        assert took < 10, f"launcher took {took:.1f}s after kill -9"
        report = _report(job)
        assert re.search(rf"ROOT CAUSE: {role} {index}@127.0.0.1 .*pid {pids[0]}\) killed by SIGKILL",
                         report), report
        assert_none_left(job.tag)
    finally:
        job.stop()


def test_hung_worker_is_noticed_through_heartbeats():
    job = _launch("--env", "PSFRAME_HEARTBEAT_TIMEOUT=2", "--env", "PSFRAME_HEARTBEAT_INTERVAL=0.2",
                  WORKER, "--steps", "1000", "--sleep", "0.02")
    try:
        job.wait_for_line(r"\[worker 1@127.0.0.1\] STEP 3 OK", 30)
        pid, = pids_with_env(job.tag, PSFRAME_ROLE="worker", PSFRAME_RANK=1)
        os.kill(pid, signal.SIGSTOP)          # hung: alive, silent, never exits by itself
        hung_at = time.monotonic()
        rc, _ = job.wait(30)
        took = time.monotonic() - hung_at
        assert rc != 0, job.text()
        assert took < 8, f"{took:.1f}s with a 2 s heartbeat timeout"
        report = _report(job)
        # the headline names the hung worker, not the scheduler that noticed and exited
        assert re.search(r"ROOT CAUSE: worker 1@127\.0\.0\.1 \(role worker, rank 1, .*pid "
                         rf"{pid}\): .*no heartbeat .*\(named by the scheduler", report), report
        assert_none_left(job.tag)
    finally:
        job.stop()


def test_worker_that_never_starts_fails_within_start_timeout():
    job = _launch("--start-timeout", "3", WORKER, "--never-start-rank", "2")
    try:
        rc, elapsed = job.wait(40)
        assert rc != 0, job.text()
        assert elapsed < 20, f"took {elapsed:.1f}s with --start-timeout 3"
        report = _report(job)
        assert "ROOT CAUSE" in report
        # whoever noticed first, the report names the missing worker (the scheduler's words)
        assert re.search(r"ranks? \[2\]|worker 2\b", report), report
        assert_none_left(job.tag)
    finally:
        job.stop()


def test_missing_script_fails_fast():
    job = _launch("/nonexistent/train.py")
    try:
        rc, elapsed = job.wait(30)
        assert rc == 2, job.text()          # python: "can't open file"
        assert elapsed < 10
        assert "ROOT CAUSE: worker" in _report(job) and "can't open file" in _report(job)
        assert_none_left(job.tag)
    finally:
        job.stop()


def test_launcher_sigterm_stops_everything():
    job = _launch(WORKER, "--steps", "1000", "--sleep", "0.05")
    try:
        job.wait_for_line(r"\[worker 0@127.0.0.1\] STEP 2 OK", 30)
        assert len(pids_with_env(job.tag, PSFRAME_ROLE="worker")) == 3
        job.proc.send_signal(signal.SIGTERM)   # to `timeout`, which forwards it to the launcher
        sent = time.monotonic()
        rc, _ = job.wait(30)
        assert rc == 128 + signal.SIGTERM, job.text()
        assert time.monotonic() - sent < 10
        assert "stopped by signal SIGTERM" in _report(job)
        assert_none_left(job.tag)
    finally:
        job.stop()


def test_bad_flag_exits_2_with_message():
    job = Launch(["-n", "2", "--env", "PSFRAME_RANK=3", WORKER], new_tag())
    try:
        rc, _ = job.wait(30)
        assert rc == 2
        assert "PSFRAME_RANK is set by psframe-launch" in _report(job)
    finally:
        job.stop()


def test_busy_scheduler_port_is_retried(monkeypatch, caplog):
    from psframe_launcher import supervisor
    from psframe_launcher.config import LaunchConfig
    from launcher_fixtures import TAG_VAR
    tag = new_tag()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = [busy.getsockname()[1]]
        real = supervisor.free_port
        monkeypatch.setattr(supervisor, "free_port", lambda host: ports.pop() if ports else real(host))
        cfg = LaunchConfig(num_workers=2, num_servers=1, script=WORKER, env=((TAG_VAR, tag),),
                           start_timeout=20)
        out, err = io.StringIO(), io.StringIO()
        with caplog.at_level(logging.WARNING, logger="psframe_launcher.supervisor"):
            rc = supervisor.launch(cfg, out=out, err=err)
    assert rc == 0, out.getvalue() + err.getvalue()
    assert "Address already in use" in out.getvalue()          # attempt 1's scheduler said so
    assert any("retrying with another port" in r.getMessage() for r in caplog.records)
    assert "[worker 1@127.0.0.1] DONE rank=1" in out.getvalue()
    assert_none_left(tag)


def test_launcher_kill_9_leaves_nothing():
    # not even the children the workers started, in their process group or in a session of
    # their own (the job's reaper sweeps what carries the job's id)
    job = _launch(WORKER, "--steps", "1000", "--sleep", "0.05", "--spawn-children")
    try:
        job.wait_for_line(r"\[worker 2@127.0.0.1\] STEP 2 OK", 30)
        launcher = [p for p in cmdline_pids(r"^\S*python\S* \S*/psframe-launch ") if p in tagged_pids(job.tag)]
        assert len(launcher) == 1
        os.kill(launcher[0], signal.SIGKILL)   # no handler runs: the kernel's PDEATHSIG must act
        rc, _ = job.wait(30)
        assert rc in (-9, 128 + 9)             # `timeout` re-raises its child's signal
        assert_none_left(job.tag, within=10)
    finally:
        job.stop()


def test_progress_bars_keep_the_prefix_and_leave_no_fragments_in_logs(tmp_path):
    job = Launch(["-n", "2", "--log-dir", str(tmp_path), os.path.join(BIN, "progress_bar.py")],
                 new_tag(), timeout=60)
    try:
        rc, _ = job.wait(60)
        assert rc == 0, job.text()
        assert_none_left(job.tag)
    finally:
        job.stop()
    assert not any("\r" in l for l in job.lines), job.text()
    bars = [l for l in job.lines if "steps:" in l]
    assert bars and all(l.startswith("[worker 0@127.0.0.1] steps: 100%") for l in bars), job.text()
    assert "[worker 1@127.0.0.1] rank 1 done" in job.lines      # only rank 0 draws a bar
    log = (tmp_path / "worker-0-at-127.0.0.1.log").read_text()
    assert "\r" not in log and "0/5" not in log and "steps: 100%" in log, repr(log)


def test_job_lines_count_right_and_label_the_push_counts():
    job = Launch(["-n", "2", "-v", os.path.join(BIN, "progress_bar.py")], new_tag(), timeout=60)
    try:
        rc, _ = job.wait(60)
        assert rc == 0, job.text()
    finally:
        job.stop()
    text = job.text()
    assert "waiting for 2 workers and 1 server" in text, text
    assert "launching 2 workers, 1 server via local" in text, text
    assert "shutdown: pushes received per worker rank: [0, 0]" in text, text
    assert "1 servers" not in text, text
