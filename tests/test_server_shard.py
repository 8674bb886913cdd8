"""The pure shard state: step merges in rank order, parking, backpressure acks, async, errors."""
import numpy as np
import pytest

from psframe.errors import DoubleInitError, ProtocolError, ShapeMismatchError, UninitializedKeyError
from psframe.protocol import ArrayDesc
from psframe.server.shard import ShardState


def d(step=0, shape=(3,), dtype="float64", key="k", part=0):
    return ArrayDesc(key, part, dtype, shape, step)


def toks(replies):
    return sorted((r.token for r in replies), key=str)


def test_init_waits_for_rank0_value_then_answers_everyone():
    s = ShardState(3)
    assert s.init(1, d(), None, "t1") == []
    assert s.init(2, d(), None, "t2") == []
    replies = s.init(0, d(), np.ones(3), "t0")
    assert toks(replies) == ["t0", "t1", "t2"] and all(r.error is None for r in replies)
    err = s.init(1, d(), None, "again")[0].error
    assert isinstance(err, DoubleInitError)


def test_sync_step_sums_in_rank_order_and_acks_at_completion():
    s = ShardState(3)
    s.init(0, d(), np.zeros(3), None)
    assert s.push(2, d(1), np.full(3, 3.0), "p2") == []
    assert s.pull(2, d(1), "q2") == []                     # parked until step 1 completes
    assert s.push(0, d(1), np.full(3, 1.0), "p0") == []
    replies = s.push(1, d(1), np.full(3, 2.0), "p1")
    assert toks(replies) == ["p0", "p1", "p2", "q2"]
    pulled = [r for r in replies if r.token == "q2"][0].arrays[0][1]
    np.testing.assert_array_equal(pulled, [6.0, 6.0, 6.0])   # the sum replaces the value


def test_rank_order_makes_float_sums_reproducible():
    vals = [np.float32(1e8), np.float32(1.0), np.float32(-1e8)]
    results = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        s = ShardState(3)
        s.init(0, d(dtype="float32", shape=(1,)), np.zeros(1, np.float32), None)
        for r in order:
            s.push(r, d(1, (1,), "float32"), np.array([vals[r]]), None)
        (rep,) = s.pull(0, d(1, (1,), "float32"), "q")
        results.add(float(rep.arrays[0][1][0]))
    assert results == {float((vals[0] + vals[1]) + vals[2])}


def test_run_ahead_keeps_steps_apart():
    s = ShardState(2)
    s.init(0, d(), np.zeros(3), None)
    for step in (1, 2, 3):
        s.push(0, d(step), np.full(3, float(step)), f"a{step}")
    assert len(s.keys[("k", 0)].merges) == 3
    s.push(1, d(1), np.full(3, 10.0), "b1")
    (rep,) = s.pull(1, d(1), "q")
    np.testing.assert_array_equal(rep.arrays[0][1], [11.0] * 3)


def test_push_step_out_of_sequence_is_a_protocol_error():
    s = ShardState(2)
    s.init(0, d(), np.zeros(3), None)
    assert isinstance(s.push(0, d(2), np.ones(3), "x")[0].error, ProtocolError)


def test_async_applies_every_push():
    s = ShardState(2, sync=False)
    s.init(0, d(), np.zeros(3), None)
    for i in range(5):
        s.push(i % 2, d(i // 2 + 1), np.ones(3), None)
    (rep,) = s.pull(0, d(0), "q")
    np.testing.assert_array_equal(rep.arrays[0][1], [5.0] * 3)


def test_errors_name_key_and_shapes():
    s = ShardState(1)
    assert isinstance(s.push(0, d(1), np.ones(3), "t")[0].error, UninitializedKeyError)
    s.init(0, d(), np.zeros(3), None)
    err = s.push(0, d(1, shape=(4,)), np.ones(4), "t")[0].error
    assert isinstance(err, ShapeMismatchError) and "(3,)" in str(err) and "(4,)" in str(err)


class _Sgd:
    elementwise = False

    def create_state(self, key, weight):
        return {}

    def update(self, key, weight, grad, state):
        weight -= 0.5 * grad


def test_optimizer_updates_in_place_and_keeps_weights_on_reset():
    s = ShardState(2)
    s.init(0, d(), np.ones(3), None)
    s.set_optimizer(_Sgd())
    s.push(0, d(1), np.ones(3), None)
    s.push(1, d(1), np.ones(3), None)
    (rep,) = s.pull(0, d(1), "q")
    np.testing.assert_array_equal(rep.arrays[0][1], [0.0] * 3)
    assert s.stats()["updates"] == 1


def test_stats_count_bytes_per_worker_rank_both_ways():
    """Pushed and pulled bytes per rank (a parked pull counts when it is answered): with the
    ranks' hosts, the bench tells what crossed between hosts."""
    s = ShardState(3)
    s.init(0, d(), np.zeros(3), None)
    s.push(0, d(1), np.ones(3), None)
    assert s.pull(2, d(1), "q2") == []
    assert s.stats()["bytes_out_by_rank"] == [0, 0, 0]
    s.push(2, d(1), np.ones(3), None)
    s.push(1, d(1), np.ones(3), None)
    s.pull(1, d(1), "q1")
    s.pull(1, d(1), "q1b")
    stats = s.stats()
    item = np.dtype("float64").itemsize
    assert stats["bytes_in_by_rank"] == [3 * item] * 3
    assert stats["bytes_out_by_rank"] == [0, 6 * item, 3 * item]
    assert sum(stats["bytes_in_by_rank"]) == stats["bytes_in"]
    assert sum(stats["bytes_out_by_rank"]) == stats["bytes_out"]
