"""psframe.data against a real S3 endpoint (moto_server on 127.0.0.1): workers as subprocesses and
in-process ranks, the server's request log, and every failure mode ending in a fast DataError."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import psframe
from conftest import require
from psframe.errors import DataError, PSError
from s3_fixtures import SECRET, aws_env, moto, storage_options  # noqa: F401 - fixture

WORKER = os.path.join(os.path.dirname(__file__), "bin", "data_worker.py")
BUCKET = "psf-train"
# Uneven shards whose boundaries fall on the 4 workers' 1000-record shares.
TEN = [400, 600, 300, 300, 400, 1000, 250, 250, 250, 250]
TEN_OWNERS = {0: {0, 1}, 1: {2, 3, 4}, 2: {5}, 3: {6, 7, 8, 9}}


def records(n, width=8):
    ids = np.arange(n, dtype=np.int64)
    x = np.repeat(ids[:, None].astype(np.float32), width, axis=1)
    return {"x": x, "y": ids}


@pytest.fixture(scope="module")
def so(moto):
    return storage_options(moto.endpoint)


@pytest.fixture(scope="module")
def ten(moto, so):
    psframe.data.write_partitions(records(sum(TEN)), f"s3://{BUCKET}/ten", shard_sizes=TEN,
                                  storage_options=so)
    return f"s3://{BUCKET}/ten/*.npz"


def objects_by_rank(moto, prefix):
    """{rank: set of shard basenames that rank fetched} from the server's recording; asserts
    every object request came from a psframe worker (so none hides from the check)."""
    seen = {}
    for req in moto.requests():
        if not req["key"].startswith(prefix) or req["key"].endswith("_psframe_manifest.json"):
            continue
        assert "psframe-data/rank-" in req["agent"], f"unattributed request {req}"
        rank = int(req["agent"].split("psframe-data/rank-")[1].split()[0])
        seen.setdefault(rank, set()).add(req["key"].rsplit("/", 1)[1])
    return seen


def run_workers(moto, url, out, n=4, epochs=2, batch_size=64, timeout=60):
    os.makedirs(out)
    procs = []
    for rank in range(n):
        env = dict(os.environ, PSFRAME_RANK=str(rank), PSFRAME_NUM_WORKERS=str(n),
                   **aws_env(moto.endpoint))
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, url, out, str(epochs), str(batch_size), moto.endpoint],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        logs = [p.communicate(timeout=timeout)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [json.load(open(os.path.join(out, f"rank-{r}.json"))) for r in range(n)]


def check_epoch_cover(results, total):
    lens = {r["len"] for r in results}
    assert len(lens) == 1, f"batch counts differ between workers: {[r['len'] for r in results]}"
    for epoch in range(len(results[0]["epochs"])):
        ids = [i for r in results for batch in r["epochs"][epoch] for i in batch]
        assert sorted(ids) == list(range(total)), f"epoch {epoch} does not cover each record once"
        for r in results:
            assert len(r["epochs"][epoch]) == r["len"]


def test_four_worker_processes_disjoint_balanced_reshuffled_repeatable(moto, ten, tmp_path):
    moto.start_recording()
    first = run_workers(moto, ten, str(tmp_path / "run1"))
    moto.stop_recording()
    check_epoch_cover(first, sum(TEN))
    for r in first:
        share = set(range(r["rank"] * 1000, r["rank"] * 1000 + 1000))
        for epoch in r["epochs"]:
            assert {i for b in epoch for i in b} == share
        assert r["epochs"][0] != r["epochs"][1], "epoch 1 was not reshuffled"
        assert [len(b) for b in r["epochs"][0]] == [64] * 15 + [40]
    # The server's log: each worker fetched exactly its own shards and nothing else.
    seen = objects_by_rank(moto, "ten/")
    want = {r: {f"part-{i:05d}.npz" for i in files} for r, files in TEN_OWNERS.items()}
    assert seen == want
    # A second run (fresh datasets, in-process ranks, credentials as storage_options) gives the
    # same batches in the same order.
    for r in first:
        ds = psframe.data.PartitionedDataset(ten, 64, seed=7, rank=r["rank"], num_workers=4,
                                             storage_options=storage_options(moto.endpoint))
        again = [[b["y"].tolist() for b in ds] for _ in range(2)]
        assert again == r["epochs"], f"rank {r['rank']}: second run differs"


def test_three_files_four_workers_balance(moto, so):
    sizes = [500, 130, 370]
    url = f"s3://{BUCKET}/three"
    psframe.data.write_partitions(records(1000), url, shard_sizes=sizes, storage_options=so)
    moto.start_recording()
    results = []
    for rank in range(4):
        ds = psframe.data.PartitionedDataset(url + "/*.npz", 32, rank=rank, num_workers=4,
                                             seed=3, storage_options=so, read_block_bytes=2000)
        results.append({"rank": rank, "len": len(ds), "epochs": [
            [b["y"].tolist() for b in ds], [b["y"].tolist() for b in ds]]})
        assert ds.epoch == 2
    moto.stop_recording()
    check_epoch_cover(results, 1000)
    assert results[0]["len"] == 8      # 250 records per worker, batch 32
    seen = objects_by_rank(moto, "three/")
    assert seen == {0: {"part-00000.npz"}, 1: {"part-00000.npz"},
                    2: {"part-00001.npz", "part-00002.npz"}, 3: {"part-00002.npz"}}
    # Byte ranges, not whole objects: rank 0 and 1 share part-00000 but read different halves.
    ranges = {r: sorted(q["range"] for q in moto.requests() if q["key"] == "three/part-00000.npz"
                        and q["range"] and f"rank-{r}" in q["agent"]) for r in (0, 1)}
    only0, only1 = set(ranges[0]) - set(ranges[1]), set(ranges[1]) - set(ranges[0])
    assert len(only0) >= 2 and len(only1) >= 2, ranges   # its own x and y rows


def test_large_shard_is_streamed_as_byte_ranges(moto, so):
    """Four workers share one 2.6 MB shard: each fetches only ranges, about a quarter of it."""
    url = f"s3://{BUCKET}/big"
    n = 40_000
    psframe.data.write_partitions(records(n, width=14), url, num_shards=1, storage_options=so)
    size = n * (14 * 4 + 8)
    moto.start_recording()
    for rank in range(4):
        # prefetch=0: no read-ahead into the next epoch, so the bytes add up exactly
        ds = psframe.data.PartitionedDataset(url, 500, rank=rank, num_workers=4, seed=1,
                                             storage_options=so, read_block_bytes=256 << 10,
                                             prefetch=0)
        assert sorted(i for b in ds for i in b["y"].tolist()) == list(
            range(rank * n // 4, (rank + 1) * n // 4))
        ds.close()
    moto.stop_recording()
    for rank in range(4):
        gets = [q for q in moto.requests() if q["method"] == "GET" and q["key"] == "big/part-00000.npz"
                and f"rank-{rank}" in q["agent"]]
        assert gets and all(q["range"] for q in gets), gets   # never a whole-object GET
        fetched = 0
        for q in gets:
            start, end = q["range"].split("=")[1].split("-")
            fetched += int(end) - int(start) + 1
        # its quarter of the data, plus headers (zip directory, npy headers: < 200 KB)
        assert size // 4 <= fetched < size // 4 + 200_000, (rank, fetched, size)


def expect_fast_error(fn, *needles, limit=15.0):
    t0 = time.monotonic()
    with pytest.raises(DataError) as info:
        fn()
    elapsed = time.monotonic() - t0
    assert elapsed < limit, f"took {elapsed:.1f}s"
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    assert SECRET not in msg
    assert isinstance(info.value, PSError) and isinstance(info.value, OSError)
    return msg


def test_missing_bucket_and_prefix(so):
    expect_fast_error(lambda: psframe.data.PartitionedDataset(
        "s3://no-such-bucket-psf/train/*.npz", 8, rank=0, num_workers=1, storage_options=so),
        "s3://no-such-bucket-psf", "does not exist")
    expect_fast_error(lambda: psframe.data.PartitionedDataset(
        f"s3://{BUCKET}/no-such-prefix/*.npz", 8, rank=0, num_workers=1, storage_options=so),
        f"s3://{BUCKET}/no-such-prefix", "does not exist")
    expect_fast_error(lambda: psframe.data.PartitionedDataset(
        f"s3://{BUCKET}/no-such-dir", 8, rank=0, num_workers=1, storage_options=so),
        f"s3://{BUCKET}/no-such-dir", "not found")


def test_empty_glob(ten, so):
    expect_fast_error(lambda: psframe.data.PartitionedDataset(
        f"s3://{BUCKET}/ten/*.npy", 8, rank=0, num_workers=1, storage_options=so),
        "matched no shards", f"s3://{BUCKET}/ten")


def test_corrupt_shard(moto, so):
    import s3fs
    url = f"s3://{BUCKET}/corrupt"
    psframe.data.write_partitions(records(400), url, num_shards=4, storage_options=so)
    fs = s3fs.S3FileSystem(**so)
    size = fs.size(f"{BUCKET}/corrupt/part-00002.npz")
    fs.pipe_file(f"{BUCKET}/corrupt/part-00002.npz", b"\x00" * size)   # same length: manifest ok
    for rank in (0, 1, 3):   # the other workers are unaffected
        ds = psframe.data.PartitionedDataset(url, 25, rank=rank, num_workers=4,
                                             storage_options=so)
        assert sum(len(b["y"]) for b in ds) == 100
    ds = psframe.data.PartitionedDataset(url, 25, rank=2, num_workers=4, storage_options=so)
    expect_fast_error(lambda: list(ds), f"{url}/part-00002.npz", "corrupt", "rewrite")
    # A shard of a different length than the manifest says: stale manifest, found at listing.
    fs.pipe_file(f"{BUCKET}/corrupt/part-00001.npz", b"junk")
    expect_fast_error(lambda: psframe.data.PartitionedDataset(
        url, 25, rank=0, num_workers=4, storage_options=so), "stale", "part-00001.npz")


def test_object_deleted_mid_epoch(moto, so):
    import s3fs
    url = f"s3://{BUCKET}/vanish"
    psframe.data.write_partitions(records(2000), url, num_shards=4, storage_options=so)
    ds = psframe.data.PartitionedDataset(url + "/*.npz", 50, shuffle=False, rank=0,
                                         num_workers=1, storage_options=so, prefetch=1,
                                         read_block_bytes=100 * 40, shuffle_blocks=1)
    it = iter(ds)
    first = next(it)
    assert first["y"].tolist() == list(range(50))
    s3fs.S3FileSystem(**so).rm(f"{BUCKET}/vanish/part-00003.npz")
    msg = expect_fast_error(lambda: [b for b in it], f"{url}/part-00003.npz", "disappeared")
    assert "mid-epoch" in msg or "since disappeared" in msg


def test_unreachable_endpoint_retries_then_names_url(caplog):
    from psframe.transport.addresses import free_port
    # botocore's own retries (5 by default, ~7 s against a closed port) are cut to keep the
    # test short; psframe's retries (retries=2) are what this test checks.
    dead = storage_options(f"http://127.0.0.1:{free_port()}",
                           config_kwargs={"retries": {"max_attempts": 1}})
    msg = expect_fast_error(lambda: psframe.data.PartitionedDataset(
        "s3://some-bucket/train/*.npz", 8, rank=0, num_workers=1, storage_options=dead,
        retries=2, retry_backoff=0.05), "s3://some-bucket/train/*.npz", "failed 2 times",
        limit=30)
    assert "endpoint_url" in msg
    assert SECRET not in caplog.text


def test_credentials_never_logged(ten, so, caplog):
    caplog.set_level("DEBUG", logger="psframe")
    ds = psframe.data.PartitionedDataset(ten, 100, rank=1, num_workers=4, storage_options=so)
    assert sum(len(b["y"]) for b in ds) == 1000
    assert SECRET not in caplog.text and SECRET not in repr(ds.state_dict())
    assert "psframe.data" in caplog.text or caplog.records


def launch(moto, args, timeout=90):
    exe = shutil.which("psframe-launch") or os.path.join(os.path.dirname(sys.executable),
                                                         "psframe-launch")
    require(os.path.exists(exe), "psframe-launch (pip install -e . in the venv)")
    env = dict(os.environ, **aws_env(moto.endpoint))
    # Credentials travel by name (--env KEY takes the launcher's value), never in argv.
    forward = [a for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
               for a in ("--env", k)]
    t0 = time.monotonic()
    proc = subprocess.run([exe, "-n", "4", "-s", "1", *forward, WORKER, *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace"), time.monotonic() - t0


def test_launched_under_psframe_launch(moto, ten, tmp_path):
    """4 workers under ``psframe-launch -n 4 -s 1`` read the S3 dataset: same checks."""
    out = tmp_path / "launched"
    out.mkdir()
    moto.start_recording()
    code, log, _ = launch(moto, [ten, str(out), "2", "64", moto.endpoint])
    moto.stop_recording()
    assert code == 0, log[-3000:]
    assert SECRET not in log
    results = [json.load(open(out / f"rank-{r}.json")) for r in range(4)]
    check_epoch_cover(results, sum(TEN))
    assert objects_by_rank(moto, "ten/") == {
        r: {f"part-{i:05d}.npz" for i in files} for r, files in TEN_OWNERS.items()}


def test_launched_job_stops_fast_on_missing_bucket(moto, tmp_path):
    code, log, elapsed = launch(moto, ["s3://no-such-bucket-psf/x/*.npz", str(tmp_path), "1",
                                       "8", moto.endpoint])
    assert code != 0
    assert "DataError" in log and "s3://no-such-bucket-psf" in log, log[-3000:]
    assert elapsed < 60, f"job took {elapsed:.1f}s to stop"
    assert SECRET not in log
