"""Workers that leave the shard's steps: joined (missing pushes count as zero, kv.join) and
finished (a step that needs them fails at once, naming them)."""
import numpy as np

from psframe.errors import UnevenStepsError
from psframe.protocol import ArrayDesc
from psframe.server.shard import ShardState


def d(step=0, shape=(3,), key="k"):
    return ArrayDesc(key, 0, "float64", shape, step)


def pulled(replies, token):
    return [r for r in replies if r.token == token][0].arrays[0][1]


def test_joined_rank0_counts_as_zero_and_rank_order_holds():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((4, 3, 3))       # [step, rank, values]
    s = ShardState(3)
    s.init(0, d(), np.zeros(3), None)
    for r in range(3):                       # step 1: everyone
        s.push(r, d(1), g[0, r].copy(), None)
    assert s.leave(0, joined=True) == []
    for step in (2, 3):                      # rank 0 has joined: steps 2, 3 from ranks 1, 2
        assert s.push(2, d(step), g[step - 1, 2].copy(), None) == []
        s.push(1, d(step), g[step - 1, 1].copy(), None)
    value = pulled(s.pull(1, d(3), "q"), "q")
    np.testing.assert_array_equal(value, g[2, 1] + g[2, 2])   # exact: the same two additions


def test_join_completes_a_step_already_waiting_on_the_joined_rank():
    s = ShardState(3)
    s.init(0, d(), np.zeros(3), None)
    s.push(0, d(1), np.ones(3), "a0")
    s.push(1, d(1), np.full(3, 2.0), "a1")
    assert s.pull(0, d(1), "q0") == []                          # waits for rank 2
    replies = s.leave(2, joined=True)
    assert sorted(r.token for r in replies) == ["a0", "a1", "q0"]
    np.testing.assert_array_equal(pulled(replies, "q0"), [3.0, 3.0, 3.0])


def test_joined_rank_in_a_fusion_group_member_by_member():
    s = ShardState(2)
    members = [("a", (2,)), ("b", (3,))]
    s.init(0, ArrayDesc("grp", 0, "float64", (5,), 0), np.zeros(5), None, members=members)
    s.push(0, ArrayDesc("grp", 0, "float64", (5,), 1), np.arange(5.0), None)
    s.push(1, ArrayDesc("grp", 0, "float64", (5,), 1), np.ones(5), None)
    s.leave(0, joined=True)
    s.push(1, ArrayDesc("b", 0, "float64", (3,), 2), np.full(3, 7.0), None)
    (rep,) = s.pull(1, ArrayDesc("b", 0, "float64", (3,), 2), "q")
    np.testing.assert_array_equal(rep.arrays[0][1], [7.0, 7.0, 7.0])
    (rep,) = s.pull(1, ArrayDesc("a", 0, "float64", (2,), 1), "q")
    np.testing.assert_array_equal(rep.arrays[0][1], [1.0, 2.0])


def test_finished_rank_fails_the_step_it_is_missing_from_at_once():
    s = ShardState(3)
    s.init(0, d(), np.zeros(3), None)
    for r in range(3):
        s.push(r, d(1), np.ones(3), None)
    s.push(1, d(2), np.ones(3), "a1")
    replies = s.leave(0, joined=False)
    assert [r.token for r in replies] == ["a1"]
    err = replies[0].error
    assert isinstance(err, UnevenStepsError)
    assert "step 2 of key 'k'" in str(err) and "worker 0 finished" in str(err) \
        and "after pushing it 1 times" in str(err) and "kv.join()" in str(err)
    (rep,) = s.push(2, d(2), np.ones(3), "a2")        # later calls fail at once, same error
    assert isinstance(rep.error, UnevenStepsError)


def test_a_finished_rank_does_not_fail_a_member_nobody_pushed_at_that_step():
    """A group member pushed alone runs a step ahead of the others: that step exists for it
    only. A worker finishing afterwards fails nothing, and every member still answers."""
    s = ShardState(2)
    members = [("a", (2,)), ("b", (3,))]
    s.init(0, ArrayDesc("grp", 0, "float64", (5,), 0), np.zeros(5), None, members=members)
    for r in range(2):
        s.push(r, ArrayDesc("grp", 0, "float64", (5,), 1), np.full(5, r + 1.0), None)
        s.push(r, ArrayDesc("b", 0, "float64", (3,), 2), np.full(3, 10.0 * (r + 1)), None)
    assert s.leave(0, joined=False) == []
    (rep,) = s.pull(1, ArrayDesc("a", 0, "float64", (2,), 1), "q")
    np.testing.assert_array_equal(rep.arrays[0][1], [3.0, 3.0])
    (rep,) = s.pull(1, ArrayDesc("b", 0, "float64", (3,), 2), "q")
    np.testing.assert_array_equal(rep.arrays[0][1], [30.0, 30.0, 30.0])
