"""``psframe-launch --max-restarts``: a server killed with SIGKILL during training; the launcher
stops the job, starts it again with PSFRAME_RESTART=1, the example resumes from its newest
complete checkpoint and ends with weights bitwise equal to a run that was never interrupted."""
import json
import os
import re
import signal
import time

from launcher_fixtures import Launch, assert_none_left, new_tag, pids_with_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "train_mlp.py")
# 3 epochs of 42 steps (2 workers x 16 records); a checkpoint every 10 steps
ARGS = ["--epochs", "3", "--warmup-epochs", "0.5", "--batch-size", "16"]


def sha(out):
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    return metrics["weights_sha256"], metrics["steps"]


def test_killed_server_restarts_and_resumes_to_the_same_weights(tmp_path):
    data = str(tmp_path / "digits")
    plain = Launch(["-n", "2", "-s", "2", EXAMPLE, *ARGS, "--data", data, "--out", str(tmp_path / "plain")],
                   new_tag(), timeout=120, cwd=str(tmp_path))
    try:
        assert plain.wait(120)[0] == 0, plain.text()
    finally:
        plain.stop()
    expect = sha(tmp_path / "plain")

    ck = tmp_path / "ck"
    # server 1 blocks on its first file of the step-40 checkpoint (a FIFO nobody reads), so the
    # job cannot pass step 40 before the kill below: it dies between steps 30 and 40
    os.makedirs(ck / "step-00000040" / "shard-1")
    fifo = ck / "step-00000040" / "shard-1" / "0.value.npy"
    os.mkfifo(fifo)
    job = Launch(["-n", "2", "-s", "2", "--max-restarts", "2", EXAMPLE, *ARGS, "--data", data,
                  "--out", str(tmp_path / "restarted"), "--checkpoint-dir", str(ck),
                  "--checkpoint-every", "10"], new_tag(), timeout=150, cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while not (ck / "step-00000030" / "manifest.json").exists():
            assert time.monotonic() < deadline and job.proc.poll() is None, job.text()
            time.sleep(0.02)
        server, = pids_with_env(job.tag, PSFRAME_ROLE="server", PSFRAME_SERVER_RANK=0)
        os.kill(server, signal.SIGKILL)
        killed = time.monotonic()
        os.remove(fifo)                    # the restarted job writes its step-40 checkpoint
        job.wait_for_line(r"\[worker 0@[^]]*\] rank 0: resumed from .*step-00000030 at step 30", timeout=60)
        resumed = time.monotonic() - killed
        job.wait_for_line(r"\[worker 1@[^]]*\] rank 1: resumed from .*step-00000030 at step 30", timeout=10)
        rc, _ = job.wait(120)
        assert rc == 0, job.text()
    finally:
        job.stop()
    assert_none_left(job.tag)
    err = "\n".join(job.err_lines)
    assert re.search(r"ROOT CAUSE: server 0@\S+ \(role server, rank 0.*killed by SIGKILL", err), err
    assert "restart 1 of 2: starting the whole job again with PSFRAME_RESTART=1" in err, err
    assert re.search(r"job succeeded after 1 restart\(s\); earlier runs failed: server 0@", err), err
    got = sha(tmp_path / "restarted")
    assert got == expect, (got, expect)
    print(f"server death to training again: {resumed:.2f} s")
