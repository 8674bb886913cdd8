"""Who the failure report blames when one process's failure takes the others down: a process
that exits EXIT_ABORTED_BY_PEER (75) stopped because another failed, so it is never the root
cause while a real failure exists or arrives shortly after it; with only 75s the report says
that no process reported its own failure. Scripted (no process) and real (local backend) jobs."""
import os
import re
import time

import pytest

from launcher_fixtures import BIN, Launch, assert_none_left, new_tag
from psframe.config import EXIT_ABORTED_BY_PEER
from psframe_launcher.backends.base import ExitStatus
from psframe_launcher.supervisor import PEER_ABORT_WAIT
from test_launcher_supervisor import _job

# plan order: 0 scheduler, 1 server 0, 2..4 workers 0..2
PEER = ExitStatus(code=EXIT_ABORTED_BY_PEER)


def test_peer_aborts_first_then_the_real_failure_is_the_root_cause():
    # scheduler and server 0 exit 75 before worker 1 (exit 1) has finished exiting
    job, _, err = _job([(0.02, 0, PEER, 0.02), (0.05, 1, PEER, 0.05), (0.08, 2, PEER, 0.08),
                        (0.6, 3, ExitStatus(code=1), 0.6)])
    started = time.monotonic()
    result = job.run()
    took = time.monotonic() - started
    job.report(result)
    report = err.getvalue()
    assert result.exit_code == 1 and result.cause_known, report
    assert [h.spec.label for h in result.failures] == [
        "worker 1@h", "scheduler@h", "server 0@h", "worker 0@h"]
    assert "ROOT CAUSE: worker 1@h (role worker, rank 1, host h, pid 1003) exited with code 1" in report
    assert "also stopped: scheduler@h (role scheduler, host h, pid 1000) exited with code 75 " \
           "(stopped because another process failed)" in report
    assert "| hello from worker 1@h" in report and "last 1 lines of scheduler@h" in report
    assert took < 0.6 + 1.0, "stops as soon as the real failure arrives, not after the wait"


def test_real_failure_reported_late_still_wins_over_an_earlier_peer_abort():
    # worker 1 ended first (t=0.01) but its end is posted after the 75s (output draining)
    job, _, err = _job([(0.03, 0, PEER, 0.03), (0.3, 3, ExitStatus(code=4), 0.01)])
    result = job.run()
    job.report(result)
    assert result.exit_code == 4
    assert "ROOT CAUSE: worker 1@h" in err.getvalue()


def test_only_peer_aborts_say_so_plainly():
    job, _, err = _job([(0.02, 1, PEER, 0.02), (0.04, 0, PEER, 0.04)])
    started = time.monotonic()
    result = job.run()
    took = time.monotonic() - started
    job.report(result)
    report = err.getvalue()
    assert result.exit_code == EXIT_ABORTED_BY_PEER and not result.cause_known
    assert PEER_ABORT_WAIT <= took < PEER_ABORT_WAIT + 1.5
    assert "no process reported its own failure" in report
    assert re.search(r"First to stop: server 0@h .* exited with code 75 "
                     r"\(stopped because another process failed\)", report), report
    assert not re.search(r"ROOT CAUSE: server", report), report
    assert "also stopped: scheduler@h" in report


def test_process_stopped_by_its_agent_is_not_the_root_cause():
    # mpirun/srun tearing the job down: agents report the exits they caused as 'stopped'
    term = ExitStatus(signal=15, stopped=True)
    job, _, err = _job([(0.02, 2, term, 0.02), (0.2, 4, ExitStatus(code=3), 0.2)])
    result = job.run()
    job.report(result)
    assert result.exit_code == 3
    assert "ROOT CAUSE: worker 2@h" in err.getvalue()
    assert "also stopped: worker 0@h" in err.getvalue()


# --- real processes, local backend -------------------------------------------------------------

def _run(script, *args, within=10.0):
    job = Launch(["-n", "3", "-s", "2", os.path.join(BIN, script), *args], new_tag(), timeout=60)
    try:
        job.wait_for_line(r"\[worker \d@127\.0\.0\.1\] ", 30)
        rc, _ = job.wait(30)
        assert_none_left(job.tag)
    finally:
        job.stop()
    return rc, "\n".join(job.err_lines), job


@pytest.mark.integration
def test_fake_peer_aborts_blame_the_worker_that_failed():
    rc, report, job = _run("peer_abort_fake.py")
    assert rc == 1, job.text()
    assert re.search(r"ROOT CAUSE: worker 1@127\.0\.0\.1 .* exited with code 1\n", report), report
    assert "| ValueError: boom" in report
    assert re.search(r"also stopped: worker [02]@127\.0\.0\.1 .* exited with code 75", report), report


@pytest.mark.integration
def test_fake_only_peer_aborts():
    rc, report, job = _run("peer_abort_fake.py", "--only-peer-aborts")
    assert rc == EXIT_ABORTED_BY_PEER, job.text()
    assert "no process reported its own failure" in report, report
    assert not re.search(r"ROOT CAUSE: worker", report), report


@pytest.mark.integration
def test_uncaught_exception_is_the_root_cause_not_the_processes_it_took_down():
    # the scheduler/servers/other workers exit 75 once told of the crash, often before the
    # crashing worker has finished exiting: several runs to catch that race
    for attempt in range(3):
        job = Launch(["-n", "3", "-s", "2", os.path.join(BIN, "raise_after_init.py")],
                     new_tag(), timeout=60)
        try:
            job.wait_for_line(r"\[worker 1@127\.0\.0\.1\] rank 1 initialised", 30)
            failed_at = time.monotonic()
            rc, _ = job.wait(30)
            took = time.monotonic() - failed_at
            assert_none_left(job.tag)
        finally:
            job.stop()
        report = "\n".join(job.err_lines)
        assert re.search(r"ROOT CAUSE: worker 1@127\.0\.0\.1 \(role worker, rank 1, .*\) "
                         r"exited with code 1\n", report), f"attempt {attempt}:\n{job.text()}"
        assert "| ValueError: boom" in report, report
        assert rc == 1, job.text()
        # workers stopped because rank 1 failed print one line each, not a traceback
        for rank in (0, 2):
            own = [l for l in job.lines if l.startswith(f"[worker {rank}@")]
            assert not any("Traceback" in l for l in own), job.text()
            assert len([l for l in own if "stopped because another process" in l]) <= 1, job.text()
        assert took < 10, f"launcher took {took:.1f}s after the worker's failure"
