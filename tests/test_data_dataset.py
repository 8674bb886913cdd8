"""PartitionedDataset on memory:// and local paths (the same code path as S3): coverage, balance,
shuffle, resume, formats, and the error cases."""
import gc
import io
import json
import os
import struct
import threading
import time
import tracemalloc
import uuid
import zlib

import fsspec
from fsspec.implementations.memory import MemoryFileSystem
import numpy as np
import pytest

import psframe
from psframe.data import PartitionedDataset, readers, write_partitions
from psframe.errors import ConfigError, DataError


def records(n, width=3):
    ids = np.arange(n, dtype=np.int64)
    return {"x": (ids[:, None] * 10 + np.arange(width)).astype(np.float32), "y": ids}


def mem_url():
    return f"memory://psf-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["memory", "local"])
def root(request, tmp_path):
    return mem_url() if request.param == "memory" else str(tmp_path / "ds")


def epoch_ids(ds):
    batches = list(ds)
    for b in batches:
        assert (b["x"][:, 0] == b["y"] * 10).all(), "x and y rows out of step"
    return [b["y"].tolist() for b in batches]


def all_workers(url, n, batch_size, **kw):
    return [PartitionedDataset(url, batch_size, rank=r, num_workers=n, **kw) for r in range(n)]


@pytest.mark.parametrize("sizes,workers", [([100, 400, 0, 300, 200], 4), ([5, 7, 3], 4),
                                          ([1000], 3), ([10] * 9, 2)])
def test_every_record_once_equal_batches(root, sizes, workers):
    write_partitions(records(sum(sizes)), root, shard_sizes=sizes)
    total = sum(sizes)
    datasets = all_workers(root, workers, 16, seed=5, read_block_bytes=64)
    assert len({len(d) for d in datasets}) == 1
    for epoch in range(2):
        per = [sum(epoch_ids(d), []) for d in datasets]
        assert {len(p) for p in per} == {-(-total // workers)}
        flat = sorted(sum(per, []))
        pad = workers * -(-total // workers) - total   # wrapped records repeat from the start
        assert flat == sorted(list(range(total)) + list(range(pad)))


def test_drop_last_drops_tail_and_partial_batch(root):
    write_partitions(records(103), root, num_shards=3)
    datasets = all_workers(root, 4, 10, drop_last=True, seed=1)
    for d in datasets:
        assert len(d) == 2                       # 25 records each -> 2 full batches
        assert [len(b) for b in epoch_ids(d)] == [10, 10]


def test_shuffle_per_epoch_same_seed_same_order(root):
    write_partitions(records(600), root, num_shards=6)
    a = PartitionedDataset(root, 32, seed=11, rank=1, num_workers=2, read_block_bytes=200)
    b = PartitionedDataset(root, 32, seed=11, rank=1, num_workers=2, read_block_bytes=200)
    c = PartitionedDataset(root, 32, seed=12, rank=1, num_workers=2, read_block_bytes=200)
    e0, e1 = epoch_ids(a), epoch_ids(a)          # the dataset moves on to epoch 1 by itself
    assert e0 != e1 and sorted(sum(e0, [])) == sorted(sum(e1, [])) == list(range(300, 600))
    b.set_epoch(1)
    assert epoch_ids(b) == e1
    b.set_epoch(0)
    assert epoch_ids(b) == e0
    assert epoch_ids(c) != e0
    plain = PartitionedDataset(root, 32, shuffle=False, rank=1, num_workers=2)
    assert sum(epoch_ids(plain), []) == list(range(300, 600))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_state_dict_resume_mid_epoch(root, prefetch):
    write_partitions(records(500), root, num_shards=5)
    kw = dict(seed=3, rank=0, num_workers=2, read_block_bytes=120, shuffle_blocks=2,
              prefetch=prefetch)
    ref = PartitionedDataset(root, 16, **kw)
    ref.set_epoch(4)
    full = epoch_ids(ref)
    ds = PartitionedDataset(root, 16, **kw)
    ds.set_epoch(4)
    it = iter(ds)
    head = [next(it)["y"].tolist() for _ in range(7)]
    state = json.loads(json.dumps(ds.state_dict()))     # survives a JSON round trip
    it.close()
    assert state["epoch"] == 4 and state["batch"] == 7
    resumed = PartitionedDataset(root, 16, **kw)
    resumed.load_state_dict(state)
    assert head + epoch_ids(resumed) == full
    assert resumed.epoch == 5
    with pytest.raises(ConfigError, match="batch_size"):
        PartitionedDataset(root, 8, **kw).load_state_dict(state)


def test_npy_shards_local_and_memory(root):
    write_partitions({"feat": np.arange(90, dtype=np.float64).reshape(45, 2)}, root,
                     num_shards=4, format="npy")
    got = []
    for d in all_workers(root + "/*.npy", 3, 4, seed=0):
        got += [r for b in d for r in b["feat"][:, 0].tolist()]
    assert sorted(got) == list(range(0, 90, 2))


def test_without_manifest_counts_from_headers_and_compressed_npz(tmp_path):
    # A bare .npy plus a compressed .npz (not byte-rangeable: read whole), no manifest.
    d = tmp_path / "raw"
    d.mkdir()
    np.save(d / "a.npy", np.arange(10, dtype=np.int32))
    np.save(d / "b.npy", np.arange(10, 25, dtype=np.int32))
    ds = PartitionedDataset(str(d / "*.npy"), 4, rank=0, num_workers=1, shuffle=False)
    assert sum((b["data"].tolist() for b in ds), []) == list(range(25))
    np.savez_compressed(d / "c.npz", **records(30))
    ds = PartitionedDataset(str(d / "c.npz"), 7, rank=1, num_workers=2, seed=2)
    ids = sum(epoch_ids(ds), [])
    assert sorted(ids) == list(range(15, 30))


def test_fortran_order_shard_read_whole(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.arange(40, dtype=np.float32).reshape(20, 2)))
    ds = PartitionedDataset(str(tmp_path / "f.npy"), 5, rank=0, num_workers=1, shuffle=False)
    assert np.concatenate([b["data"] for b in ds]).tolist() == \
        np.arange(40, dtype=np.float32).reshape(20, 2).tolist()


def test_object_arrays_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickle"):
        PartitionedDataset(str(tmp_path / "o.npy"), 1, rank=0, num_workers=1)
    with pytest.raises(ConfigError, match="pickle"):
        write_partitions({"o": np.array([None, 1], dtype=object)}, str(tmp_path / "w"), 1)


def test_errors_name_the_url(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        PartitionedDataset(str(tmp_path / "nope" / "*.npz"), 4, rank=0, num_workers=1)
    assert str(tmp_path / "nope") in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="matched no shards"):
        PartitionedDataset(str(tmp_path / "empty" / "*.npz"), 4, rank=0, num_workers=1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.npy").write_bytes(b"definitely not numpy" * 10)
    with pytest.raises(DataError, match="corrupt") as info:
        PartitionedDataset(str(tmp_path / "bad"), 4, rank=0, num_workers=1)
    assert "x.npy" in str(info.value) and info.value.url.endswith("x.npy")
    (tmp_path / "trunc").mkdir()
    buf = io.BytesIO()
    np.save(buf, np.arange(100))
    (tmp_path / "trunc" / "t.npy").write_bytes(buf.getvalue()[:-8])
    with pytest.raises(DataError, match="corrupt"):
        PartitionedDataset(str(tmp_path / "trunc"), 4, rank=0, num_workers=1)
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "a.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="not a supported shard"):
        PartitionedDataset(str(tmp_path / "csv" / "*"), 4, rank=0, num_workers=1)


def test_shard_replaced_after_listing_is_detected(tmp_path):
    url = str(tmp_path / "d")
    write_partitions(records(100), url, num_shards=2)
    ds = PartitionedDataset(url, 10, rank=0, num_workers=1, shuffle=False, prefetch=0,
                            read_block_bytes=10 * 20, shuffle_blocks=1)
    it = iter(ds)
    next(it)
    write_partitions(records(40), url, num_shards=2)   # shards shrink under the reader
    with pytest.raises(DataError, match=r"part-0000[01]\.npz.*(changed|corrupt)"):
        list(it)


def test_arrays_must_match_across_shards(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(4, np.float32))
    np.save(tmp_path / "b.npy", np.zeros(4, np.float64))
    with pytest.raises(DataError, match="same array names, dtypes"):
        PartitionedDataset(str(tmp_path / "*.npy"), 2, rank=0, num_workers=1)


class FlakyMemoryFS(MemoryFileSystem):
    """A memory filesystem whose range reads fail ``failures`` times before succeeding."""
    protocol = "flakymem"
    failures = 0
    lock = threading.Lock()

    def cat_file(self, path, start=None, end=None, **kw):
        with self.lock:
            if FlakyMemoryFS.failures > 0:
                FlakyMemoryFS.failures -= 1
                raise ConnectionResetError("simulated network blip")
        return super().cat_file(path, start=start, end=end, **kw)


@pytest.fixture
def flaky():
    fsspec.register_implementation("flakymem", FlakyMemoryFS, clobber=True)
    yield FlakyMemoryFS
    FlakyMemoryFS.failures = 0


def test_transient_errors_retried_then_named(flaky, caplog):
    url = "flakymem://" + uuid.uuid4().hex[:8]
    write_partitions(records(60), url, num_shards=2)
    flaky.failures = 3
    ds = PartitionedDataset(url, 10, rank=0, num_workers=1, retries=5, retry_backoff=0.01)
    assert sorted(sum(epoch_ids(ds), [])) == list(range(60))
    assert "simulated network blip" in caplog.text and "retry" in caplog.text
    ds.set_epoch(0)               # drops the read-ahead of epoch 1
    flaky.failures = 10 ** 6
    ds._reader._layouts.clear()   # force header reads again: they now always fail
    with pytest.raises(DataError, match=r"failed 5 times.*simulated") as info:
        list(ds)
    assert url.split("://")[1] in info.value.url


def test_rank_and_num_workers_from_env(monkeypatch, tmp_path):
    write_partitions(records(40), str(tmp_path), num_shards=4)
    monkeypatch.setenv("PSFRAME_RANK", "3")
    monkeypatch.setenv("PSFRAME_NUM_WORKERS", "4")
    ds = PartitionedDataset(str(tmp_path), 5, shuffle=False)
    assert (ds.rank, ds.num_workers, len(ds)) == (3, 4, 2)
    assert sum(epoch_ids(ds), []) == list(range(30, 40))
    assert ds.files == [fsspec.core.url_to_fs(str(tmp_path))[0].unstrip_protocol(
        os.path.join(str(tmp_path), "part-00003.npz"))]


def test_bad_arguments():
    with pytest.raises(ConfigError):
        PartitionedDataset("memory://x", 0, rank=0, num_workers=1)
    with pytest.raises(ConfigError, match="sum to"):
        write_partitions(records(10), mem_url(), shard_sizes=[3, 3])
    with pytest.raises(ConfigError, match="first dimension"):
        write_partitions({"a": np.zeros(3), "b": np.zeros(4)}, mem_url(), 1)
    url = mem_url()
    write_partitions(records(3), url, 1)
    with pytest.raises(ConfigError, match="fewer than num_workers"):
        PartitionedDataset(url, 1, rank=0, num_workers=4, drop_last=True)


def test_public_surface():
    assert psframe.data.PartitionedDataset is PartitionedDataset
    assert set(psframe.data.__all__) == {"PartitionedDataset", "write_partitions"}


def test_no_prefetch_thread_outlives_its_iterator(tmp_path):
    write_partitions(records(200), str(tmp_path), num_shards=4)
    ds = PartitionedDataset(str(tmp_path), 8, rank=0, num_workers=1, read_block_bytes=100,
                            shuffle_blocks=1, prefetch=2)
    def threads():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and [t for t in threading.enumerate()
                                               if t.name.startswith("psframe-prefetch")]:
            time.sleep(0.05)
        return [t for t in threading.enumerate() if t.name.startswith("psframe-prefetch")]
    it = iter(ds)
    for i, _ in enumerate(it):
        if i == 3:
            break
    it.close()
    assert not threads()
    list(ds)                  # reads ahead into epoch 1 once epoch 0's last group is in
    assert ds._ahead and threads()
    ds.close()
    assert not threads()
    with PartitionedDataset(str(tmp_path), 8, rank=0, num_workers=1) as ds2:
        list(ds2)
    assert not threads()
    ds3 = PartitionedDataset(str(tmp_path), 8, rank=0, num_workers=1)
    list(ds3)
    del ds3                   # garbage collection stops the read-ahead too
    gc.collect()
    assert not threads()


def test_read_ahead_into_next_epoch_gives_the_same_batches(tmp_path):
    write_partitions(records(300), str(tmp_path), num_shards=3)
    kw = dict(rank=0, num_workers=1, seed=4, read_block_bytes=400, shuffle_blocks=2)
    with PartitionedDataset(str(tmp_path), 16, prefetch=2, **kw) as ahead, \
            PartitionedDataset(str(tmp_path), 16, prefetch=0, **kw) as plain:
        for epoch in range(3):
            assert epoch_ids(ahead) == epoch_ids(plain)
        ahead.set_epoch(7)    # the read-ahead of epoch 3 is dropped, epoch 7 is read
        plain.set_epoch(7)
        assert epoch_ids(ahead) == epoch_ids(plain)


def test_webhdfs_and_hdfs_urls_take_the_same_path():
    """No HDFS server exists here: check that webhdfs:// goes through listing + retries to a
    DataError naming the URL, and that hdfs:// without pyarrow says what to install."""
    from psframe.transport.addresses import free_port
    url = f"webhdfs://127.0.0.1:{free_port()}/data/*.npz"
    t0 = time.monotonic()
    with pytest.raises(DataError, match="failed 2 times") as info:
        PartitionedDataset(url, 4, rank=0, num_workers=1, retries=2, retry_backoff=0.01)
    assert info.value.url == url and time.monotonic() - t0 < 10
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="install"):
            PartitionedDataset("hdfs://127.0.0.1:9000/data/*.npz", 4, rank=0, num_workers=1)



def test_compressed_npz_inflated_once_per_epoch(tmp_path, monkeypatch):
    # A compressed shard cannot be read by byte range; many small read groups must still share
    # one download and inflation per epoch.
    np.savez_compressed(tmp_path / "c.npz", **records(600))
    calls = []
    real = readers._load_whole
    monkeypatch.setattr(readers, "_load_whole", lambda *a: calls.append(1) or real(*a))
    # no read-ahead: a prefetcher may start the next epoch (its inflation) before we count
    with PartitionedDataset(str(tmp_path / "c.npz"), 10, rank=0, num_workers=2, seed=1,
                            read_block_bytes=256, shuffle_blocks=1, prefetch=0) as ds:
        for epoch in range(2):
            ds.set_epoch(epoch)
            assert sorted(sum(epoch_ids(ds), [])) == list(range(300))
    assert len(calls) == 2


def _deflate_zip_bomb(path, npy_header, zero_chunks, chunk=1 << 24):
    """An .npz whose one member is ``npy_header`` followed by ``zero_chunks * chunk`` zero bytes,
    deflated without compressing a gigabyte: one fully flushed block of zeros is repeated."""
    first = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    body = first.compress(npy_header) + first.compress(zeros) + first.flush(zlib.Z_FULL_FLUSH)
    again = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = again.compress(zeros) + again.flush(zlib.Z_FULL_FLUSH)
    body += block * (zero_chunks - 1) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = zlib.crc32(npy_header)
    for _ in range(zero_chunks):
        crc = zlib.crc32(zeros, crc)
    size, name = len(npy_header) + zero_chunks * chunk, b"x.npy"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(body), size,
                        len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(body),
                          size, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central),
                      len(local) + len(body), 0)
    path.write_bytes(local + body + central + end)


def test_zip_bomb_member_rejected_without_inflating(tmp_path):
    # The member's header declares 10 float32 records; the member inflates to 1 GiB of zeros.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10,)})
    bomb = tmp_path / "bomb.npz"
    _deflate_zip_bomb(bomb, header.getvalue(), zero_chunks=64)
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="zip bomb"):
            list(PartitionedDataset(str(bomb), 5, rank=0, num_workers=1, shuffle=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak} bytes allocated while rejecting the shard"
