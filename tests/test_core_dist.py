"""The core job end to end: real scheduler, servers and workers as processes on 127.0.0.1."""
import os

import numpy as np
import pytest

from cluster import run_job
from psframe.config import EXIT_ABORTED_BY_PEER

HERE = os.path.dirname(os.path.abspath(__file__))
N = 3


@pytest.fixture(scope="module")
def semantics_runs():
    """The same job twice (3 workers, 2 servers), for semantics and reproducibility."""
    return [run_job(os.path.join(HERE, "bin", "core_semantics.py"), N, 2, timeout=120).check()
            for _ in range(2)]


def test_sync_semantics(semantics_runs):
    res = semantics_runs[0].results()
    tri = N * (N + 1) // 2
    for r in range(N):
        x = res[r]
        assert x["init"] == 10.0                       # rank 0's init wins
        assert x["rounds"] == [s * tri for s in range(1, 6)] and x["rounds_exact"]
        for key, vals in x["dtypes"].items():
            if key != "i64":
                assert vals == [tri] * 5, key
        assert x["int64_exact"]                        # exact beyond 2**40
        assert x["device_list"] == [3.0 * N] * 4    # list of arrays = their sum
        assert x["big_exact"]                          # 3,000,003 elements over 2 servers
        assert x["pushpull"] == [tri] * 6
        assert x["ahead"] == [sum(9 + q for q in range(N))] * 2  # ran 10 steps ahead
    stats = res[0]["stats"]
    assert len(stats) == N and len(set(stats)) == 1 and stats[0] > 0   # every worker pushed


def test_errors_name_key_and_shapes(semantics_runs):
    errs = semantics_runs[0].results()[1]["errors"]
    assert "'w'" in errs["shape"] and "(4, 3)" in errs["shape"] and "(3, 4)" in errs["shape"]
    assert "'nope'" in errs["uninit"] and "kv.init" in errs["uninit"]
    assert "'w'" in errs["double"]


def test_bitwise_identical_runs(semantics_runs):
    a, b = (r.results() for r in semantics_runs)
    assert all(a[r]["checksum"] == b[r]["checksum"] for r in range(N))


def test_big_key_is_sliced_over_both_servers(semantics_runs):
    out = semantics_runs[0].outputs
    # each server logs its per-worker push counts at shutdown; both hold part of "big"
    assert "shutdown" in out["server:0"] and "shutdown" in out["server:1"]


def test_async_no_push_lost_or_doubled():
    k = 25
    res = run_job(os.path.join(HERE, "bin", "async_pushes.py"), N, 2, args=[k], timeout=120).check().results()
    expected = k * sum(10 ** r for r in range(N))
    for r in range(N):
        assert res[r] == {"value": expected, "uniform": True}


def test_missing_worker_fails_within_start_timeout():
    names = ["scheduler", "server:0", "worker:0"]   # worker 1 never starts
    job = run_job(os.path.join(HERE, "bin", "async_pushes.py"), 2, 1, args=[1], timeout=30,
                  env={"PSFRAME_START_TIMEOUT": "2"}, start=names)
    assert job.elapsed < 20
    assert job.codes["scheduler"] != 0 and job.codes["worker:0"] != 0
    assert "1 of 2 workers (ranks [1])" in job.outputs["scheduler"]
    assert "ranks [1]" in job.outputs["worker:0"]


def test_uncaught_exception_stops_the_job_without_a_launcher():
    job = run_job(os.path.join(HERE, "bin", "crash_at_start.py"), 2, 1, timeout=60)
    assert job.elapsed < 30     # includes start-up under load; a missed abort would take 60 s
    assert all(code != 0 for code in job.codes.values()), job.codes
    # the worker stopped because worker 1 failed says so in one line, with no traceback
    stopped = [l for l in job.outputs["worker:0"].splitlines() if l.strip()]
    assert stopped == ["psframe: stopped because another process of the job failed: JobAbortedError: "
                       "job aborted by the scheduler: worker 1@127.0.0.1 failed: uncaught RuntimeError: "
                       "boom at step 0"], job.outputs["worker:0"]
    assert job.codes["worker:0"] == EXIT_ABORTED_BY_PEER
    assert "Traceback" in job.outputs["worker:1"]      # the failed worker keeps its own


def test_async_with_optimizer_applies_every_push():
    res = run_job(os.path.join(HERE, "bin", "kinds.py"), N, 2, args=["dist_async"], timeout=60).check().results()
    for r in range(N):         # 3 pushes from each of N workers, each an SGD step of 0.5
        assert res[r] == {"type": "dist_async", "w": [10.0 - 0.5 * 3 * N] * 4, "same": True}


def test_device_sync_sums_device_lists_and_broadcasts_pulls():
    res = run_job(os.path.join(HERE, "bin", "kinds.py"), N, 1, args=["dist_device_sync"], timeout=60).check().results()
    for r in range(N):
        assert res[r] == {"type": "dist_device_sync", "w": [3.0 * N] * 4, "same": True}


@pytest.mark.parametrize("fuse", ["default", "off"])
def test_fused_keys_keep_per_key_semantics(fuse):
    """300 small keys of two dtypes: pushed whole, key by key on one worker while the others
    push the list, and in subsets that put the groups out of step; every value is exact."""
    env = {"PSFRAME_FUSE_KEY_BYTES": "0"} if fuse == "off" else {}
    res = run_job(os.path.join(HERE, "bin", "fused_keys.py"), N, 2, env=env, timeout=120).check().results()
    for r in range(N):
        assert {k: res[r][k] for k in ("whole", "mixed", "subsets", "whole_again")} == dict.fromkeys(
            ("whole", "mixed", "subsets", "whole_again"), True), res[r]
    assert res[0]["key_pushes"] == N * 6 * 300     # 6 steps of every key, fused or not
    if fuse == "off":
        assert res[0]["entries"] == 300
    else:                                  # 250 small keys in a few groups, 50 big keys alone
        assert 50 < res[0]["entries"] <= 60, res[0]


def test_workers_that_group_keys_differently_get_a_clear_error():
    job = run_job(os.path.join(HERE, "bin", "fused_keys.py"), 2, 1, args=["mismatch"], timeout=60)
    assert job.codes["worker:0"] != 0 or job.codes["worker:1"] != 0
    text = job.outputs["worker:0"] + job.outputs["worker:1"]
    assert "initialise the same lists of keys in the same order on every worker" in text, text[-3000:]


@pytest.mark.parametrize("ipc", ["1", "0"])
def test_big_entries_reach_servers_on_their_machine_over_a_unix_socket(ipc):
    """With PSFRAME_IPC=1 a big key-part travels over the server's unix socket and a small key
    over TCP (which moves small messages faster); with 0 everything is TCP. Sums are exact."""
    res = run_job(os.path.join(HERE, "bin", "server_addresses.py"), 2, 2, timeout=60,
                  env={"PSFRAME_IPC": ipc, "PSFRAME_BIGARRAY_BOUND": "1000",
                       "PSFRAME_HIERARCHICAL": "0"}).check().results()
    for r in range(2):
        assert res[r]["sum"] == 3.0 and res[r]["uniform"], res[r]
        assert res[r]["small_sum"] == 3.0 and res[r]["small_uniform"], res[r]
        assert {a.partition("://")[0] for a in res[r]["addresses"]} == {"tcp"}, res[r]
        if ipc == "1":
            assert all(a.startswith("ipc://") and "/psframe-" in a for a in res[r]["local"]), res[r]
            assert res[r]["big_sent"] == {"tcp": 0, "unix": 2}, res[r]     # one part per server
        else:
            assert res[r]["local"] == [None, None], res[r]
            assert res[r]["big_sent"] == {"tcp": 2, "unix": 0}, res[r]
        assert res[r]["small_sent"] == {"tcp": 1, "unix": 0}, res[r]


def test_plain_python_numbers_are_arrays_in_dist_kinds():
    """The same rules as the local kind (tests/test_kvstore_local.py), through real servers:
    a list of numbers is one array, a scalar a 0-d array; the sums are those numpy gives."""
    res = run_job(os.path.join(HERE, "bin", "plain_values.py"), N, 2, timeout=60).check().results()
    for r in range(N):
        got = res[r]
        assert got["b"] == [1.0, 2.0, 3.0] and got["w_dtype"] == "float32", got
        assert got["w"] == (N * np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)).tolist(), got
        assert got["s"] == float(sum(range(N))), got
        assert got["i"] == [sum(range(N)), 10 * sum(range(N))], got
        assert got["errors"]["str"][0] == "TypeError" and "push of key 'w'" in got["errors"]["str"][1]
        assert got["errors"]["out"][0] == "TypeError" and "out must be an array" in got["errors"]["out"][1]
        assert got["errors"]["bool"][0] == "UnsupportedDTypeError", got["errors"]
        assert "init of key 'flags': dtype bool" in got["errors"]["bool"][1], got["errors"]


def test_high_priority_small_pushpull_overtakes_queued_big_one():
    """Messages go out highest priority first: a 4 KB pushpull at priority 10 completes while a
    100 MB pushpull at priority -1, sent just before it on the same socket, is still in flight."""
    res = run_job(os.path.join(HERE, "bin", "priority_overtake.py"), 2, 1,
                  env={"PSFRAME_IPC": "0", "PSFRAME_HIERARCHICAL": "0"}, timeout=180).check().results()
    for rank, r in res.items():
        assert r == {"small_first": True, "big_exact": True, "small_exact": True}, (rank, r)


def test_server_answers_requests_completed_together_by_priority(tmp_path):
    """Two pushpulls of worker 0 (priority 1, then 5) complete at once when worker 1's single
    message arrives; the server answers the priority-5 one first."""
    import json
    path = str(tmp_path / "trace.json")
    res = run_job(os.path.join(HERE, "bin", "priority_overtake.py"), 2, 1, args=["replies"],
                  env={"PSFRAME_TIMELINE": path, "PSFRAME_HIERARCHICAL": "0"}, timeout=120).check().results()
    assert all(r == {"exact": True} for r in res.values()), res
    with open(str(tmp_path / "trace.worker-0.json")) as f:
        ends = {e["name"]: e["ts"] + e["dur"] for e in json.load(f)["traceEvents"]
                if e.get("ph") == "X" and e.get("cat") == "pushpull"}
    assert ends["pushpull hi"] < ends["pushpull lo"], ends
