"""Failures a user can hit in the core, each ending fast with the cause named (real processes)."""
import os

from cluster import run_job
from conftest import require
from psframe.config import EXIT_ABORTED_BY_PEER

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "core_failures.py")


def test_exception_in_with_block_stops_the_job_and_names_the_worker():
    job = run_job(SCRIPT, 2, 1, args=["with_block_raises"], timeout=60)
    assert job.elapsed < 30, job.elapsed          # not PSFRAME_TIMEOUT (60 s here)
    assert job.codes["worker:1"] == 1             # the failing worker: its own traceback
    assert "boom inside the with block" in job.outputs["worker:1"]
    # everyone it took down says so, and exits with the "stopped by a peer" status
    for name in ("worker:0", "server:0", "scheduler"):
        assert job.codes[name] == EXIT_ABORTED_BY_PEER, (name, job.outputs[name][-2000:])
    assert "worker 1@127.0.0.1 failed: ValueError: boom inside the with block" in job.outputs["worker:0"]


def test_zero_copy_push_of_a_reused_torch_buffer_and_0d_values():
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    require(torch is not None, "torch (pip install -e '.[test]')")
    res = run_job(SCRIPT, 2, 1, args=["zero_copy_and_0d"], timeout=90).check().results()
    for r in range(2):
        assert res[r]["ok"] == [True] * 5           # no step saw the caller's later writes
        assert res[r]["scalar"] == 4.0 and res[r]["shape"] == []


def test_optimizer_that_raises_fails_every_worker_instead_of_hanging():
    job = run_job(SCRIPT, 2, 1, args=["optimizer_raises"], timeout=60,
                  env={"PSFRAME_USER_MODULES": SCRIPT}).check()
    for r, res in job.results().items():
        assert res["error"] and "update blew up" in res["error"], (r, res)


def test_a_timed_out_call_leaves_the_job_instead_of_sending_later():
    """A pushpull that times out while zmq still holds the caller's array must not let those
    bytes (changed by the caller afterwards) reach the server later: the worker leaves the job,
    dropping its queued sends, and later calls say why."""
    job = run_job(SCRIPT, 1, 1, args=["timeout_leaves_the_job"], timeout=60,
                  env={"PSFRAME_TIMEOUT": "2"})
    res = job.results()[0]
    assert res["first"] and "not done within 2s" in res["first"], res
    assert res["later"] and "closed (a call timed out" in res["later"], res
    assert job.elapsed < 30, job.elapsed
    # the job stopped because of the timeout, not because a heartbeat went missing
    assert job.codes["server:0"] == EXIT_ABORTED_BY_PEER, job.outputs["server:0"][-2000:]
    assert "PSTimeoutError" in job.outputs["server:0"] + job.outputs["scheduler"]
