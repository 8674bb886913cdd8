"""A job that cannot progress says which rank and which call, within PSFRAME_STALL_TIMEOUT
(+ a few seconds), and the launcher's ROOT CAUSE names that rank (real processes)."""
import os
import re
import time

import numpy as np
import pytest

from cluster import run_job
from launcher_fixtures import BIN, Launch, assert_none_left, new_tag

pytestmark = pytest.mark.integration

STALL = 2.0
SCRIPT = os.path.join(BIN, "stall_worker.py")


def _run(case, *env):
    job = Launch(["-n", "3", "-s", "2", "--env", f"PSFRAME_STALL_TIMEOUT={STALL}",
                  "--env", "PSFRAME_HEARTBEAT_INTERVAL=0.2", *env, SCRIPT, "--case", case],
                 new_tag(), timeout=90)
    try:
        job.wait_for_line(r"READY rank=2", 60)
        ready = time.monotonic()
        rc, _ = job.wait(60)
        took = time.monotonic() - ready
    finally:
        job.stop()
    assert_none_left(job.tag)
    return rc, took, "\n".join(job.err_lines), job


def test_rank_that_skips_an_init_is_named():
    rc, took, report, job = _run("skip-init")
    assert rc != 0, job.text()
    assert took < STALL + 5, f"{took:.1f}s"
    assert re.search(r"ROOT CAUSE: worker 2@127\.0\.0\.1 \(role worker, rank 2, .*ranks 0,1 "
                     r"have waited \d+ s in pushpull\('w', 'big', step 1\); rank 2 is in "
                     r"pushpull\('w', step \d\) and never called init\('big'\)", report), report


def test_set_optimizer_on_one_rank_is_named():
    rc, took, report, job = _run("optimizer-once")
    assert rc != 0, job.text()
    assert took < STALL + 5, f"{took:.1f}s"
    assert re.search(r"ROOT CAUSE: worker 1@.*rank 0 has waited \d+ s in set_optimizer\(\); "
                     r"rank 1 is in pushpull\('w', step 1\) and never called set_optimizer\(\)",
                     report), report


@pytest.mark.parametrize("tier", ["--no-host-tier", "--host-tier"])
def test_worker_that_finished_early_fails_the_next_step_at_once(tier):
    # no stall timeout needed: the servers (flat) or the host's aggregator (tier) hear that
    # rank 0 left and fail step 6 right away
    rc, took, report, job = _run("uneven", "--env", "PSFRAME_STALL_TIMEOUT=60", tier)
    assert rc != 0, job.text()
    assert took < 10, f"{took:.1f}s"
    assert re.search(r"ROOT CAUSE: worker [12]@.*UnevenStepsError: step 6 of key 'w' cannot "
                     r"complete: worker 0 finished \(closed its KVStore\) after pushing it 5 "
                     r"times.*kv\.join\(\)", report, re.S), report


@pytest.mark.parametrize("tier", ["--no-host-tier", "--host-tier"])
def test_join_lets_the_others_finish_with_zero_for_the_joined_rank(tier):
    # through the tier rank 0 is also the thread that sums the host: it goes on in kv.join()
    rc, _, _, job = _run("join", tier)
    assert rc == 0, job.text()
    # servers apply SGD lr=1 to each step's sum: steps 1-5 sum 1+2+3, steps 6-10 only 2+3
    w = np.float32(0)
    for step in range(1, 11):
        w = np.float32(w - np.float32(6 if step <= 5 else 5))
    values = [l.split("VALUE ")[1] for l in job.lines if "VALUE " in l]
    assert values == [repr(w)] * 3, job.text()


@pytest.mark.parametrize("joiners", [1, 2], ids=["a-worker-of-a-host", "a-whole-host"])
@pytest.mark.parametrize("tier", ["1", "0"], ids=["tier", "flat"])
def test_join_on_two_hosts(tier, joiners):
    """2 hosts x 2 workers (loopback addresses): rank 0 joins while rank 1 of its host goes on
    (its host's sums count it as zero), or the whole first host joins (the servers count both
    as zero); SGD lr=1: steps 1-5 sum 1+2+3+4, steps 6-10 the rest, exactly."""
    res = run_job(SCRIPT, 4, 2, args=["--case", "join", "--joiners", joiners], per_host=2,
                  env={"PSFRAME_HIERARCHICAL": tier}, timeout=90).check()
    w = np.float32(0)
    for step in range(1, 11):
        w = np.float32(w - np.float32(10 if step <= 5 else 10 - sum(range(1, joiners + 1))))
    values = [l.split("VALUE ")[1] for text in res.outputs.values() for l in text.splitlines()
              if l.startswith("VALUE ")]
    assert values == [repr(w)] * 4, res.outputs
