"""The host tier: shared-memory segments, the (host, local rank) summation order on the servers,
and real jobs of 1 host x 4 workers through the local launcher, tiered against flat."""
import os
import re
import subprocess

import numpy as np
import pytest

from conftest import require
from launcher_fixtures import Launch, assert_none_left, new_tag, worker_results
from psframe.aggregation import reduce, shm
from psframe.errors import ConfigError, ProtocolError
from psframe.protocol import ArrayDesc
from psframe.server.shard import ShardState

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "bin", "host_tier_job.py")


# -- shared-memory segments --------------------------------------------------------------------
def test_segment_is_shared_unlinked_and_swept():
    prefix = shm.job_prefix(f"tcp://127.0.0.1:{os.getpid()}-test")
    seg = shm.Segment.create(f"{prefix}-a", 4096)
    other = shm.Segment.attach(f"{prefix}-a", 4096)
    seg.array(128, "float32", (4,))[:] = [1, 2, 3, 4]
    np.testing.assert_array_equal(other.array(128, "float32", (4,)), [1, 2, 3, 4])  # same memory
    with pytest.raises(ConfigError, match="already exists"):
        shm.Segment.create(f"{prefix}-a", 4096)
    seg.unlink()                     # the name goes; both mappings stay valid
    assert shm.leftovers(prefix) == []
    other.array(0, "int64", (1,))[0] = 7
    assert seg.array(0, "int64", (1,))[0] == 7
    with pytest.raises(ConfigError, match="cannot attach"):
        shm.Segment.attach(f"{prefix}-a", 4096)
    shm.Segment.create(f"{prefix}-b", 64)
    shm.Segment.create(f"{prefix}-c", 64)
    assert shm.leftovers(prefix) == [f"{prefix}-b", f"{prefix}-c"]
    assert shm.sweep(prefix) == [f"{prefix}-b", f"{prefix}-c"] and shm.leftovers(prefix) == []
    with pytest.raises(ValueError, match="pass the end"):
        seg.array(4090, "float64", (1,))


def test_a_full_dev_shm_is_a_clear_error_not_a_sigbus(tmp_path, monkeypatch):
    require(os.geteuid() == 0, "root (to mount a small tmpfs)")
    d = tmp_path / "shm"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], check=True, timeout=20)
    try:
        monkeypatch.setattr(shm, "SHM_DIR", str(d))
        with pytest.raises(ConfigError, match=r"cannot reserve 1048576 bytes .*--shm-size.*PSFRAME_HIERARCHICAL=0"):
            shm.Segment.create("psframe-test-big", 1 << 20)
        assert os.listdir(d) == []                 # nothing half-made is left
        shm.Segment.create("psframe-test-small", 4096).array(0, "int64", (512,))[:] = 1
    finally:
        subprocess.run(["umount", "-l", str(d)], timeout=20)


def test_layout_aligns_every_array():
    offsets, total = shm.layout([1, 64, 65, 0, 8])
    assert offsets == [0, 64, 128, 256, 256] and total == 320


def test_job_prefix_is_per_scheduler():
    a, b = shm.job_prefix("tcp://h:1"), shm.job_prefix("tcp://h:2")
    assert a != b and a.startswith("psframe-") and a == shm.job_prefix("tcp://h:1")


def test_sum_in_order_is_left_to_right_into_the_first():
    rng = np.random.default_rng(0)
    parts = [(rng.standard_normal(1000) * 10.0 ** i).astype(np.float32) for i in range(4)]
    expect = ((parts[0] + parts[1]) + parts[2]) + parts[3]
    first = parts[0]
    assert reduce.sum_in_order(parts) is first
    np.testing.assert_array_equal(first, expect)


def test_sum_on_send_gives_the_bits_of_sum_in_order_message_by_message():
    """The aggregator sums a key message by message right before each goes: the same additions
    per element, whatever slices the messages take."""
    from types import SimpleNamespace
    rng = np.random.default_rng(1)
    parts = [(rng.standard_normal((40, 25)) * 10.0 ** i).astype(np.float32) for i in range(3)]
    expect = reduce.sum_in_order([p.copy() for p in parts])
    summer = reduce.SumOnSend({"k": parts})
    flat = parts[0].reshape(-1)
    cuts = [0, 7, 300, 301, 1000]
    for a, b in zip(cuts, cuts[1:]):      # two slices per message, as a batch of two parts
        mid = (a + b) // 2
        summer(SimpleNamespace(descs=[SimpleNamespace(key="k"), SimpleNamespace(key="other")] * 2,
                               bufs=[flat[a:mid], np.zeros(3, np.float32), flat[mid:b],
                                     np.zeros(3, np.float32)]))
    assert parts[0].tobytes() == expect.tobytes()
    with pytest.raises(RuntimeError, match="not a slice"):
        summer(SimpleNamespace(descs=[SimpleNamespace(key="k")], bufs=[flat[:5].copy()]))


# -- the servers' summation order --------------------------------------------------------------
HOSTS = [(0, 3, "a"), (3, 3, "b")]      # 2 hosts x 3 workers


def _grads(step, n=6, size=257):
    rng = np.random.default_rng(step)
    return [(rng.standard_normal(size) * 10.0 ** (r % 3)).astype(np.float32) for r in range(n)]


def _shard(owns):
    s = ShardState(6, owns_pushes=owns)
    for first, count, name in HOSTS:
        for r in range(first, first + count):
            s.hosts.set(r, first, count, name)
    s.init(0, ArrayDesc("k", 0, "float32", (257,), 0), np.zeros(257, np.float32), None)
    return s


def _pulled(s, step):
    return s.pull(0, ArrayDesc("k", 0, "float32", (257,), step), "q")[0].arrays[0][1].copy()


@pytest.mark.parametrize("owns", [False, True], ids=["copies", "owns"])
def test_flat_pushes_sum_each_host_first_in_any_arrival_order(owns):
    g = _grads(1)
    expect = (g[0] + g[1] + g[2]) + (g[3] + g[4] + g[5])
    flat_left_to_right = g[0] + g[1] + g[2] + g[3] + g[4] + g[5]
    assert not np.array_equal(expect, flat_left_to_right)   # the bracket matters for these values
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 4, 1, 0, 2], [3, 4, 5, 0, 1, 2]):
        s = _shard(owns)
        for r in order:
            s.push(r, ArrayDesc("k", 0, "float32", (257,), 1), g[r].copy(), None)
        np.testing.assert_array_equal(_pulled(s, 1), expect)


def test_host_sums_equal_flat_pushes_bit_for_bit():
    g = _grads(2)
    flat, tiered, mixed = _shard(True), _shard(True), _shard(True)
    desc = ArrayDesc("k", 0, "float32", (257,), 1)
    for r in range(6):
        flat.push(r, desc, g[r].copy(), None)
    host_sums = [reduce.sum_in_order([g[q].copy() for q in range(f, f + c)]) for f, c, _ in HOSTS]
    tiered.push(3, desc, host_sums[1].copy(), None, summed=True)     # the later host first
    tiered.push(0, desc, host_sums[0].copy(), None, summed=True)
    mixed.push(0, desc, host_sums[0].copy(), None, summed=True)      # one host tiered, one flat
    for r in (5, 4, 3):
        mixed.push(r, desc, g[r].copy(), None)
    want = _pulled(flat, 1)
    np.testing.assert_array_equal(_pulled(tiered, 1), want)
    np.testing.assert_array_equal(_pulled(mixed, 1), want)
    stats = tiered.stats()
    assert stats["pushes"] == [1] * 6                      # every worker's push is in it
    assert stats["hosts"] == {"a": {"messages": 0, "bytes": 0, "pushes": 1},
                              "b": {"messages": 0, "bytes": 0, "pushes": 1}}
    assert stats["key_steps"] == {"('k', 0)": {"1": {"a": 1, "b": 1}}}


def test_a_host_sum_must_come_from_the_first_worker_of_its_host():
    s = _shard(True)
    err = s.push(4, ArrayDesc("k", 0, "float32", (257,), 1), np.zeros(257, np.float32), "t",
                 summed=True)[0].error
    assert isinstance(err, ProtocolError) and "not the first worker of its host (3)" in str(err)
    with pytest.raises(ProtocolError, match="contiguous"):
        s.hosts.set(2, 3, 3, "x")           # rank 2 is not among workers 3..5


# -- real jobs: 1 host x 4 workers, 2 servers --------------------------------------------------
def _run(*flags, expect_rc=0):
    tier = () if "--no-host-tier" in flags[:-1] else ("--host-tier",)
    job = Launch(["-n", "4", "-s", "2", "--env", "PSFRAME_BIGARRAY_BOUND=1000",
                  "--env", "PSFRAME_HEARTBEAT_TIMEOUT=20", *tier, *flags[:-1], JOB, *flags[-1]],
                 new_tag(), timeout=150)
    try:
        rc, _ = job.wait(150)
        assert rc == expect_rc, job.text()
        results = worker_results(job)
        assert_none_left(job.tag)
        return job, results
    finally:
        job.stop()


def _job_prefix(job):
    """The job's /dev/shm prefix, from the scheduler address in its processes' output."""
    m = next(re.search(r"scheduler at (tcp://\S+)", l) for l in job.lines if "scheduler at tcp://" in l)
    return shm.job_prefix(m.group(1))


@pytest.fixture(scope="module")
def tiered_and_flat():
    return _run(()), _run("--no-host-tier", ())


def test_tiered_values_equal_flat_bit_for_bit(tiered_and_flat):
    (_, tiered), (_, flat) = tiered_and_flat
    assert sorted(tiered) == sorted(flat) == [0, 1, 2, 3]
    for r in range(4):
        assert tiered[r]["exact"] and flat[r]["exact"]      # both equal the plain-numpy sums
        assert tiered[r]["digest"] == flat[r]["digest"] == tiered[0]["digest"]   # Adam too


def test_one_push_per_host_per_key_part_step_and_4x_fewer_bytes(tiered_and_flat):
    (_, tiered), (_, flat) = tiered_and_flat
    host = tiered[0]["host"]
    for stats, per_step in ((tiered[0]["stats"], 1), (flat[0]["stats"], 4)):
        seen = 0
        for server in stats:
            for steps in server["key_steps"].values():
                for by_host in steps.values():
                    assert by_host == {host: per_step}
                    seen += 1
        assert seen > 0
    sent = [sum(s["hosts"][host]["bytes"] for s in run[0]["stats"]) for run in (tiered, flat)]
    # init travels from every worker either way; every push and pull after it once per host
    assert 3.0 < sent[1] / sent[0] <= 4.0, sent


def test_dev_shm_is_clean_after_a_clean_end(tiered_and_flat):
    (_, tiered), _ = tiered_and_flat
    assert shm.leftovers(tiered[0]["prefix"]) == []


def test_workers_may_init_and_pull_before_local_rank_0_inits():
    """The aggregator (local rank 0's thread) sends with local rank 0's key records: the others'
    inits wait for its own, however late it comes. 2 hosts x 2 workers on loopback addresses:
    worker 3 inits (once rank 0 did) and pulls while worker 2, its host's first, sleeps."""
    from cluster import run_job
    res = run_job(JOB, 4, 2, args=["--slow-lead", "2"], timeout=120, per_host=2,
                  env={"PSFRAME_HIERARCHICAL": "1", "PSFRAME_BIGARRAY_BOUND": "1000"}).check().results()
    assert sorted(res) == [0, 1, 2, 3] and all(r["exact"] and r["hosts"] == [2, 2] for r in res.values())


def test_dev_shm_is_clean_after_a_worker_exception():
    job, _ = _run(("--raise-rank", "2"), expect_rc=1)
    report = "\n".join(job.err_lines)
    assert "ROOT CAUSE: worker 2@" in report and "fails on purpose" in report, job.text()
    assert shm.leftovers(_job_prefix(job)) == []


def test_kill_9_of_the_aggregator_ends_the_job_naming_it_and_leaves_no_segment():
    job, _ = _run(("--kill-aggregator",), expect_rc=137)
    report = "\n".join(job.err_lines)
    # the aggregator is a thread of local rank 0: its death is that worker's, named as such
    assert re.search(r"ROOT CAUSE: worker 0@\S+ \(role worker, rank 0, .*\) killed by SIGKILL", report), job.text()
    assert shm.leftovers(_job_prefix(job)) == []


@pytest.mark.parametrize("tier", ["1", "0"], ids=["tier", "flat"])
def test_async_through_the_tier_loses_no_push(tier):
    from cluster import run_job
    k = 30
    res = run_job(os.path.join(HERE, "bin", "async_pushes.py"), 4, 2, args=[k], timeout=120,
                  env={"PSFRAME_HIERARCHICAL": tier}).check().results()
    for r in range(4):
        assert res[r] == {"value": k * sum(10 ** q for q in range(4)), "uniform": True}


def test_async_pull_after_push_sees_it_through_the_tier():
    from cluster import run_job
    k = 20
    res = run_job(os.path.join(HERE, "bin", "async_own_pushes.py"), 4, 2, args=[k], timeout=120,
                  env={"PSFRAME_HIERARCHICAL": "1"}).check().results()
    for r in range(4):
        assert res[r] == {"value": k * sum(100 ** q for q in range(4)), "own_seen": True}, res


def _device():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(not _device(), reason="no GPU: cupy and a CUDA device are needed")
def test_device_lists_with_cupy_through_the_tier():
    from cluster import run_job
    res = run_job(os.path.join(HERE, "bin", "host_tier_gpu.py"), 2, 1, timeout=120).check().results()
    assert all(res[r]["ok"] == [True] * 3 for r in range(2)), res
