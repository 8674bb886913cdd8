"""Sparse keys (row-sparse push/pull of embedding tables): the id checks, the local kind against
a numpy reference, and real jobs of 3 workers x 2 servers against the same reference."""
import json
import re
import textwrap

import numpy as np
import pytest

import psframe
from psframe import rowsparse
from cluster import run_job

R, D = 40, 4          # table rows, dim: rows 0..19 on server 0, 20..39 on server 1
STEPS = 4


def push_of(step, rank):
    """Worker ``rank``'s push at ``step``: ids with duplicates, some steps none at all; rows
    are small integers, so every sum is exact in float32 whatever the order."""
    rng = np.random.default_rng([step, rank])
    n = 0 if (step, rank) == (2, 1) else int(rng.integers(1, 9))
    ids = rng.integers(0, R, n)
    return ids, rng.integers(-4, 5, (n, D)).astype(np.float32)


def reference_table(table, steps, workers):
    """Numpy reference: at each step the rows any worker named become the sum of that step's
    pushes (duplicates summed); other rows keep their value."""
    table = table.copy()
    for step in range(1, steps + 1):
        total, touched = np.zeros_like(table), np.zeros(R, bool)
        for rank in range(workers):
            ids, rows = push_of(step, rank)
            np.add.at(total, ids, rows)
            touched[ids] = True
        table[touched] = total[touched]
    return table


def initial():
    return np.arange(R * D, dtype=np.float32).reshape(R, D)


# -- ids, rows and placement ---------------------------------------------------------------
def test_coalesce_sums_duplicates_in_given_order():
    ids = np.array([5, 1, 5, 3, 1], np.int64)
    rows = np.arange(10, dtype=np.float64).reshape(5, 2)
    got_ids, got_rows = rowsparse.coalesce(ids, rows)
    np.testing.assert_array_equal(got_ids, [1, 3, 5])
    np.testing.assert_array_equal(got_rows, [[2 + 8, 3 + 9], [6, 7], [0 + 4, 1 + 5]])


def test_row_bounds_and_owners():
    bounds = rowsparse.row_bounds(11, 3)
    np.testing.assert_array_equal(bounds, [0, 4, 8, 11])
    assert rowsparse.split_by_owner(np.array([0, 3, 4, 10]), bounds) == [(0, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize("ids,why", [
    (np.array([0, 40]), "row id 40 is out of range [0, 40)"),
    (np.array([-1, 3]), "row id -1 is out of range"),
    (np.array([1.0, 2.0]), "dtype float64"),
    (np.zeros((2, 2), np.int64), "1-d array"),
])
def test_bad_ids_are_refused_with_the_cause(ids, why):
    with pytest.raises(psframe.SparseRowError, match=re.escape(why)):
        rowsparse.check_ids("emb", ids, R, "pull")


def test_int32_ids_are_accepted_as_int64():
    got = rowsparse.check_ids("emb", np.array([3, 1], np.int32), R, "push")
    assert got.dtype == np.int64 and got.tolist() == [3, 1]


# -- the local kind ------------------------------------------------------------------------
def test_local_pushes_equal_the_numpy_reference():
    kv = psframe.create("local")
    kv.init("emb", initial(), sparse=True)
    for step in range(1, STEPS + 1):
        kv.push("emb", psframe.RowSparse(*push_of(step, 0)))
    full = np.zeros((R, D), np.float32)
    kv.pull("emb", out=full)      # a dense pull of a sparse key: the whole table
    np.testing.assert_array_equal(full, reference_table(initial(), STEPS, 1))


def test_local_pulls_of_id_subsets():
    kv = psframe.create("local")
    kv.init("emb", initial(), sparse=True)
    rng = np.random.default_rng(7)
    for n in (0, 1, 5, 60):
        ids = rng.integers(0, R, n)            # 60 of 40 rows: duplicates for sure
        out = np.full((n, D), np.nan, np.float32)
        kv.pull("emb", out=out, row_ids=ids)
        np.testing.assert_array_equal(out, initial()[ids])
    with pytest.raises(psframe.SparseRowError, match="row id 40 is out of range"):
        kv.pull("emb", out=np.zeros((2, D), np.float32), row_ids=[3, 40])
    with pytest.raises(psframe.SparseRowError, match=r"out must be an array of shape \(2, 4\)"):
        kv.pull("emb", out=np.zeros((3, D), np.float32), row_ids=[3, 4])


def test_local_wrong_values_for_sparse_and_dense_keys():
    kv = psframe.create("local")
    kv.init("emb", initial(), sparse=True)
    kv.init("w", np.zeros(3, np.float32))
    with pytest.raises(psframe.SparseRowError, match="pass psframe.RowSparse"):
        kv.push("emb", initial())
    with pytest.raises(psframe.SparseRowError, match="are for sparse keys"):
        kv.push("w", psframe.RowSparse([0], np.zeros((1, 3), np.float32)))
    with pytest.raises(psframe.SparseRowError, match=r"values have shape \(2, 4\), but 1 row ids"):
        kv.push("emb", psframe.RowSparse([0], np.zeros((2, D), np.float32)))
    with pytest.raises(psframe.SparseRowError, match="values have dtype float64"):
        kv.push("emb", psframe.RowSparse([0], np.zeros((1, D))))
    with pytest.raises(psframe.SparseRowError, match="one key per call"):
        kv.push(["w", "emb"], [np.zeros(3, np.float32), np.zeros((R, D), np.float32)])
    with pytest.raises(psframe.SparseRowError, match="2-d"):
        kv.init("flat", np.zeros(5, np.float32), sparse=True)
    with pytest.raises(psframe.DoubleInitError):
        kv.init("emb", initial(), sparse=True)


def test_local_pushpull_defaults_to_the_pushed_rows():
    kv = psframe.create("local")
    kv.init("emb", initial(), sparse=True)
    kv.set_optimizer(psframe.optim.SGD(lr=0.5))
    ids, rows = np.array([7, 2, 7]), np.ones((3, D), np.float32)
    kv.pushpull("emb", psframe.RowSparse(ids, rows))     # result written into rows
    want = initial()
    want[2] -= 0.5
    want[7] -= 1.0
    np.testing.assert_array_equal(rows, want[ids])


def test_checkpoints_refuse_a_store_with_sparse_keys(tmp_path):
    kv = psframe.create("local")
    kv.init("emb", initial(), sparse=True)
    for call in (lambda: kv.save_checkpoint(str(tmp_path / "ck")), lambda: kv.load_checkpoint(str(tmp_path / "ck"))):
        with pytest.raises(psframe.ConfigError, match="checkpoints do not cover sparse keys yet"):
            call()


def test_optimizer_without_sparse_support_is_refused():
    kv = psframe.create("local")
    kv.init("emb", initial(), sparse=True)
    with pytest.raises(psframe.OptimizerError, match="RMSProp does not support sparse keys"):
        kv.set_optimizer(psframe.optim.RMSProp())
    with pytest.raises(psframe.OptimizerError, match="momentum"):
        kv.set_optimizer(psframe.optim.SGD(momentum=0.9))
    with pytest.raises(psframe.OptimizerError, match="weight_decay"):
        kv.set_optimizer(psframe.optim.AdamW())


# -- real jobs -----------------------------------------------------------------------------
WORKER = """
import json, sys
import numpy as np
import psframe
sys.path.insert(0, {tests!r})
from test_sparse_keys import R, D, STEPS, initial, push_of

kv = psframe.create()
kv.init("emb", initial() if kv.rank == 0 else np.zeros((R, D), np.float32), sparse=True)
out = {{}}
for step in range(1, STEPS + 1):
    kv.push("emb", psframe.RowSparse(*push_of(step, kv.rank)))
    ids = np.random.default_rng([step, kv.rank, 9]).integers(0, R, 12)
    got = np.zeros((12, D), np.float32)
    kv.pull("emb", out=got, row_ids=ids)
    out[step] = [ids.tolist(), got.tolist()]
full = np.zeros((R, D), np.float32)
kv.pull("emb", out=full)
# only the owner of the named rows is contacted, with one message
before = sum(kv.sent_messages.values())
pulls0 = [s["pulls"][kv.rank] for s in kv.server_stats()]
kv.pull("emb", out=np.zeros((3, D), np.float32), row_ids=[21, 39, 21])
sent = sum(kv.sent_messages.values()) - before - 2      # less the two stats requests
pulls1 = [s["pulls"][kv.rank] for s in kv.server_stats()]
errors = []
for bad in ([0, R], [-3]):
    try:
        kv.pull("emb", out=np.zeros((len(bad), D), np.float32), row_ids=bad)
    except psframe.SparseRowError as exc:
        errors.append(str(exc))
empty = np.zeros((0, D), np.float32)
kv.pull("emb", out=empty, row_ids=np.zeros(0, np.int64))
print("RESULT " + json.dumps({{"pulls": out, "full": full.tolist(), "sent": sent,
                             "pulled_from": [b - a for a, b in zip(pulls0, pulls1)],
                             "errors": errors}}))
kv.close()
"""


def test_three_workers_two_servers_equal_the_numpy_reference(tmp_path):
    script = tmp_path / "sparse_job.py"
    script.write_text(WORKER.format(tests=str(__import__("pathlib").Path(__file__).parent)))
    results = run_job(str(script), num_workers=3, num_servers=2, timeout=90).check().results()
    want_full = reference_table(initial(), STEPS, 3)
    for rank, res in results.items():
        np.testing.assert_array_equal(np.array(res["full"], np.float32), want_full)
        for step, (ids, got) in res["pulls"].items():
            want = reference_table(initial(), int(step), 3)[ids]
            np.testing.assert_array_equal(np.array(got, np.float32), want)
        assert res["sent"] == 1, res
        assert res["pulled_from"] == [0, 1], res
        assert "row id 40 is out of range [0, 40)" in res["errors"][0]
        assert "row id -3 is out of range" in res["errors"][1]
        assert json.dumps(res["full"]) == json.dumps(results[0]["full"])   # every rank alike


ASYNC_WORKER = """
import json
import numpy as np
import psframe

kv = psframe.create("dist_async")
kv.init("emb", np.zeros((40, 2), np.float32), sparse=True)
for step in range(6):       # rows of server 0 only: server 1 is never contacted by pushes
    kv.push("emb", psframe.RowSparse([1, 5, 5], np.full((3, 2), kv.rank + 1, np.float32)))
kv.barrier()
full = np.zeros((40, 2), np.float32)
kv.pull("emb", out=full)
print("RESULT " + json.dumps({"full": full.tolist(), "pushes": [s["pushes"] for s in kv.server_stats()]}))
kv.close()
"""


def test_async_pushes_add_on_arrival_and_reach_only_the_owner(tmp_path):
    script = tmp_path / "async_job.py"
    script.write_text(ASYNC_WORKER)
    results = run_job(str(script), num_workers=2, num_servers=2, timeout=60).check().results()
    want = np.zeros((40, 2), np.float32)
    want[1] = 6 * (1 + 2)
    want[5] = 6 * 2 * (1 + 2)
    for res in results.values():
        np.testing.assert_array_equal(np.array(res["full"], np.float32), want)
        assert res["pushes"] == [[6, 6], [0, 0]]


def _message(cmd, descs, arrays, body=None):
    from psframe.protocol import codec
    frames = codec.encode(cmd, 1, "worker:0", descs, [a.view(np.uint8) for a in arrays], body)
    return codec.decode(frames)


@pytest.mark.parametrize("descs,arrays,why", [
    ([("int32", (2,)), ("float32", (2, 3))], [np.zeros(2, np.int32), np.zeros((2, 3), np.float32)],
     "not a 1-d int64 array"),
    ([("int64", (2,)), ("float32", (3, 3))], [np.zeros(2, np.int64), np.zeros((3, 3), np.float32)],
     "not \\[2, dim\\] for 2 row ids"),
    ([("int64", (2,))], [np.zeros(2, np.int64)], "carries 2"),
])
def test_codec_refuses_malformed_sparse_frames(descs, arrays, why):
    from psframe.protocol import ArrayDesc, Command, rows
    msg = _message(Command.SPARSE_PUSH, [ArrayDesc("emb", 0, d, s, 1) for d, s in descs], arrays)
    with pytest.raises(psframe.ProtocolError, match=why):
        rows.row_arrays(msg, False)


def test_codec_refuses_a_malformed_sparse_init():
    from psframe.protocol import Command, rows
    for table, why in ([["float32", [10, 2], 4, 12], "lo <= hi <= rows"],
                       [["float99", [10, 2], 0, 5], "not a supported dtype"],
                       ["x", "is not \\[dtype"]):
        msg = _message(Command.SPARSE_INIT, [], [], {"key": "emb", "table": table})
        with pytest.raises(psframe.ProtocolError, match=why):
            rows.init_table(msg)


def test_server_refuses_ids_outside_its_rows():
    from psframe.server.sparse import SparseTables
    tables = SparseTables(1)
    tables.init(0, "emb", "float32", (10, 2), 5, 10, "t0", offset=5, rows=np.zeros((5, 2), np.float32))
    (reply,) = tables.push(0, "emb", 1, np.array([2, 7]), np.ones((2, 2), np.float32), "t1")
    assert isinstance(reply.error, psframe.SparseRowError) and "row id 2 is not among" in str(reply.error)
    (reply,) = tables.pull(0, "emb", 0, np.array([9, 10]), "t2")
    assert "row id 10 is not among this server's rows 5..9" in str(reply.error)


JOIN_WORKER = """
import json
import numpy as np
import psframe

kv = psframe.create()
kv.init("emb", np.zeros((10, 2), np.float32), sparse=True)
steps = 4 if kv.rank == 0 else 2           # worker 1 runs out of data after 2 steps
for step in range(steps):
    kv.push("emb", psframe.RowSparse([step, 9], np.full((2, 2), kv.rank + 1, np.float32)))
kv.join()
full = np.zeros((10, 2), np.float32)
kv.pull("emb", out=full)
print("RESULT " + json.dumps({"full": full.tolist()}))
kv.close()
"""


def test_join_counts_a_joined_workers_missing_pushes_as_no_rows(tmp_path):
    script = tmp_path / "join_job.py"
    script.write_text(JOIN_WORKER)
    results = run_job(str(script), num_workers=2, num_servers=2, timeout=60,   # join: flat path
                      env={"PSFRAME_HIERARCHICAL": "0"}).check().results()
    want = np.zeros((10, 2), np.float32)
    want[[0, 1]] = 1 + 2          # steps 1, 2: both workers
    want[[2, 3]] = 1              # steps 3, 4: worker 0 alone
    want[9] = 1                   # row 9 last named at step 4, by worker 0 alone
    for res in results.values():
        np.testing.assert_array_equal(np.array(res["full"], np.float32), want)


BUDGET_WORKER = """
import json
import numpy as np
import psframe

kv = psframe.create()
try:
    kv.init("emb", np.zeros((100000, 64), np.float32), sparse=True)     # 12.8 MB per server
    error = None
except psframe.PSError as exc:
    error = f"{type(exc).__name__}: {exc}"
kv.init("small", np.zeros((100, 4), np.float32), sparse=True)
print("RESULT " + json.dumps({"error": error}))
kv.close()
"""


def test_a_table_over_the_servers_memory_budget_is_refused_before_it_is_held(tmp_path):
    script = tmp_path / "budget_job.py"
    script.write_text(BUDGET_WORKER)
    results = run_job(str(script), num_workers=1, num_servers=2, timeout=60,
                      env={"PSFRAME_SERVER_MEMORY_BYTES": "1000000"}).check().results()
    assert results[0]["error"].startswith("MemoryBudgetError: server:"), results
    assert "'emb'" in results[0]["error"] and "PSFRAME_SERVER_MEMORY_BYTES" in results[0]["error"]
