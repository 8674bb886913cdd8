"""Checkpoints through real jobs (scheduler, servers and workers as processes): save at step 7
of a 2 worker x 2 server job (Adam on the servers, a fusion group, a sliced key, float16 under
multi_precision), resume in fresh jobs of 2 and 3 servers and in local mode, through local disk
and a moto S3 endpoint, and a server killed in the middle of a save."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cluster import Job, run_job
from psframe import checkpoint
from psframe.checkpoint.files import Store
from psframe.errors import CheckpointError
from s3_fixtures import aws_env, moto, storage_options  # noqa: F401 - fixture

WORKER = os.path.join(os.path.dirname(__file__), "bin", "checkpoint_worker.py")
ENV = {"PSFRAME_BIGARRAY_BOUND": "1000"}      # the 5000-element key is sliced over the servers


def load(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def assert_bitwise(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "full.npz"
    run_job(WORKER, 2, 2, args=["run", out], env=ENV, timeout=60).check()
    return load(out)


@pytest.fixture(scope="module")
def saved_at_7(tmp_path_factory, uninterrupted):
    d = tmp_path_factory.mktemp("saved")
    run_job(WORKER, 2, 2, args=["run", d / "out.npz", 7, d / "ck7"], env=ENV, timeout=60).check()
    assert_bitwise(load(d / "out.npz"), uninterrupted)       # saving changes nothing
    return str(d / "ck7")


@pytest.mark.parametrize("servers", [2, 3])
def test_resume_from_step_7_is_bitwise_the_uninterrupted_run(tmp_path, saved_at_7, uninterrupted, servers):
    run_job(WORKER, 2, servers, args=["resume", tmp_path / "out.npz", saved_at_7], env=ENV,
            timeout=60).check()
    assert_bitwise(load(tmp_path / "out.npz"), uninterrupted)


def test_values_load_into_three_servers_and_into_local_mode(tmp_path, saved_at_7):
    expect = checkpoint.export_weights(saved_at_7)
    run_job(WORKER, 2, 3, args=["values", tmp_path / "three.npz", saved_at_7], env=ENV,
            timeout=60).check()
    assert_bitwise(load(tmp_path / "three.npz"), expect)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSFRAME_")}
    subprocess.run([sys.executable, WORKER, "values", tmp_path / "local.npz", saved_at_7],
                   env=dict(env, CKPT_KIND="local"), check=True, timeout=60)
    assert_bitwise(load(tmp_path / "local.npz"), expect)


def test_save_and_resume_through_s3(tmp_path, moto, uninterrupted):
    env = dict(ENV, **aws_env(moto.endpoint), CKPT_ENDPOINT=moto.endpoint)
    url = "s3://psf-ckpt-jobs/run/step-7"
    Store("s3://psf-ckpt-jobs", storage_options(moto.endpoint)).fs.mkdir("psf-ckpt-jobs")   # the bucket
    run_job(WORKER, 2, 2, args=["run", tmp_path / "saved.npz", 7, url], env=env, timeout=60).check()
    assert checkpoint.latest("s3://psf-ckpt-jobs/run", storage_options(moto.endpoint)) == url
    run_job(WORKER, 2, 2, args=["resume", tmp_path / "out.npz", url], env=env, timeout=60).check()
    assert_bitwise(load(tmp_path / "out.npz"), uninterrupted)


def test_server_killed_mid_save_leaves_the_previous_checkpoint_valid(tmp_path):
    first, second = tmp_path / "ck" / "a", tmp_path / "ck" / "b"
    # server 1 blocks opening its first file of the second save (a FIFO nobody reads): it is
    # in the middle of that save, for certain, when it is killed
    os.makedirs(second / "shard-1")
    os.mkfifo(second / "shard-1" / "0.value.npy")
    job = Job(WORKER, 2, 2, args=["save-twice", tmp_path / "out.npz", first, second], env=ENV)
    try:
        deadline = time.monotonic() + 30
        shard0 = second / "shard-0"
        while "SAVED-FIRST" not in job.output("worker:0") or not (shard0.exists() and os.listdir(shard0)):
            assert time.monotonic() < deadline and job.procs["worker:0"].poll() is None, job.output("worker:0")
            time.sleep(0.05)
        time.sleep(0.5)       # server 0 finishes its files; server 1 stays blocked
        job.procs["server:1"].send_signal(signal.SIGKILL)
    finally:
        result = job.wait(30)
    assert result.codes["server:1"] == -signal.SIGKILL
    assert all(code != 0 for name, code in result.codes.items() if name.startswith("worker")), result.codes
    assert not (second / "manifest.json").exists()
    assert checkpoint.latest(str(tmp_path / "ck")) == str(first)
    with pytest.raises(CheckpointError, match="no manifest.json"):
        checkpoint.export_weights(str(second))
    run_job(WORKER, 2, 2, args=["values", tmp_path / "values.npz", first], env=ENV, timeout=60).check()
    assert_bitwise(load(tmp_path / "values.npz"), checkpoint.export_weights(str(first)))


def test_corrupt_shard_file_fails_every_worker_naming_it(tmp_path, saved_at_7):
    import shutil
    copy = tmp_path / "ck"
    shutil.copytree(saved_at_7, copy)
    victim = copy / "shard-1" / "0.value.npy"
    blob = bytearray(victim.read_bytes())
    blob[-1] ^= 0x01
    victim.write_bytes(bytes(blob))
    result = run_job(WORKER, 2, 2, args=["values", tmp_path / "out.npz", copy], env=ENV, timeout=60)
    for rank in (0, 1):
        out = result.outputs[f"worker:{rank}"]
        assert result.codes[f"worker:{rank}"] != 0
        assert "CheckpointError" in out and f"{victim}" in out and "CRC-32" in out, out[-2000:]
    assert not (tmp_path / "out.npz").exists()
