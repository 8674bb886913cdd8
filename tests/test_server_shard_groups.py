"""Fusion groups in the pure shard state: every member of a group keeps exactly the per-key
semantics of a plain key, whatever mix of fused (whole-group) and per-member calls arrives.

A group ``g`` holds members ``[(key, shape), ...]`` in one flat buffer of ``total`` elements.
A push/pull naming ``g`` covers every member; one naming a member covers just that member.
Per key ``k`` (sync): the i-th push of ``k`` from every worker forms step i of ``k``; its value is
the rank-order sum (rank 0 + rank 1 + ...), so float32 results are bitwise reproducible; push acks
go out when every covered key's step is complete; a pull for step s waits for step s of the keys
it covers and answers with their newest value.

The randomized test at the bottom drives random scripts of fused and per-member pushes and pulls
against a plain per-key numpy model and checks every reply, when it comes and what it holds.
"""
import itertools

import numpy as np
import pytest

from psframe.errors import (ConfigError, DoubleInitError, DTypeMismatchError, OptimizerError, ProtocolError,
                            PSError, ShapeMismatchError, UninitializedKeyError)
from psframe.protocol import ArrayDesc
from psframe.server.shard import ShardState
from psframe.transport.sockets import SendGuard

F32 = "float32"
G = "g"   # the group key of every test


# -- helpers ---------------------------------------------------------------------------------
def d(step=0, shape=(3,), dtype=F32, key="k", part=0):
    return ArrayDesc(key, part, dtype, shape, step)


def f32(*values):
    return np.array(values, dtype=np.float32)


def size(shape):
    return int(np.prod(shape, dtype=np.int64))


def total(members):
    return sum(size(s) for _, s in members)


def gd(members, step=0, dtype=F32):
    """Descriptor naming the whole group."""
    return d(step, (total(members),), dtype, G)


def md(members, key, step=0, dtype=F32):
    """Descriptor naming one member."""
    return d(step, dict(members)[key], dtype, key)


def piece(members, array, m):
    """Member ``m``'s part of a flat group array, in the member's shape (a copy)."""
    lo = total(members[:m])
    return array[lo:lo + size(members[m][1])].reshape(members[m][1]).copy()


def flat(*arrays):
    return np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in arrays])


def group(n, members, value=None, sync=True, optimizer=None, guard=None, owns_pushes=False):
    """A shard whose group ``g`` every rank initialised (rank 0 last, so every init parks first)."""
    s = ShardState(n, sync=sync, guard=guard, owns_pushes=owns_pushes)
    if value is None:
        value = np.zeros(total(members), np.float32)
    replies = []
    for r in list(range(1, n)) + [0]:
        replies += s.init(r, gd(members), value if r == 0 else None, ("init", r), members=members)
    assert sorted(rep.token for rep in replies) == sorted(("init", r) for r in range(n))
    assert all(rep.error is None for rep in replies)
    if optimizer is not None:
        s.set_optimizer(optimizer)
    return s


def tokens(replies):
    return sorted((rep.token for rep in replies), key=str)


def only(replies, token):
    """The single reply to ``token``, which must carry no error."""
    found = [rep for rep in replies if rep.token == token]
    assert len(found) == 1, (token, replies)
    assert found[0].error is None, found[0].error
    return found[0]


def pulled(replies, token):
    (desc, array), = only(replies, token).arrays
    return desc, array


def only_error(replies, token):
    """The error (or None) of the single reply to ``token``."""
    (rep,) = [r for r in replies if r.token == token]
    return rep.error


def error_of(replies):
    (rep,) = replies
    assert rep.error is not None, rep
    return rep.error


def assert_bits(actual, expected):
    """Same dtype, shape and bytes (stricter than ==: tells -0.0 from 0.0)."""
    actual, expected = np.asarray(actual), np.asarray(expected, np.float32)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual, expected)
    assert actual.tobytes() == expected.tobytes(), (actual, expected)


def rank_sum(arrays):
    """The reference: float32 sum in rank order."""
    acc = np.array(arrays[0], np.float32, copy=True)
    for a in arrays[1:]:
        acc = acc + np.asarray(a, np.float32)
    return acc


def value(s, members, key=None, step=0):
    """The current value of a member (or of the whole group), by a pull that must answer now."""
    desc = md(members, key, step) if key else gd(members, step)
    return pulled(s.pull(0, desc, "peek"), "peek")[1]


class Tracker:
    """A fake zmq MessageTracker: ``done`` once the send completed; ``wait`` finishes it."""

    def __init__(self):
        self.done, self.waited = False, False

    def wait(self, timeout=None):
        self.waited = self.done = True


class Momentum:
    """An optimizer with per-key state, recording what the shard calls it with."""
    elementwise = False     # the shard calls it key by key

    def __init__(self):
        self.calls = []

    def create_state(self, key, weight):
        self.calls.append(("create", key, weight.shape))
        return np.zeros_like(weight)

    def update(self, key, weight, grad, state):
        self.calls.append(("update", key, weight.shape, grad.shape))
        state *= np.float32(0.9)
        state += grad
        weight -= np.float32(0.25) * state


ABC = [("a", (2,)), ("b", ()), ("c", (1,))]     # total 4: a = flat[0:2], b = flat[2], c = flat[3]
AB = [("a", (2,)), ("b", (3,))]


# -- init ------------------------------------------------------------------------------------
def test_group_init_answers_every_rank_when_rank0_value_arrives_and_members_are_views():
    s = ShardState(3)
    assert s.init(1, gd(ABC), None, "t1", members=ABC) == []
    assert s.init(2, gd(ABC), None, "t2", members=ABC) == []
    assert isinstance(error_of(s.pull(1, md(ABC, "a"), "early")), UninitializedKeyError)
    replies = s.init(0, gd(ABC), f32(1, 2, 3, 4), "t0", members=ABC)
    assert tokens(replies) == ["t0", "t1", "t2"] and all(r.error is None for r in replies)
    assert_bits(value(s, ABC, "a"), f32(1, 2))
    assert_bits(value(s, ABC, "b"), np.float32(3).reshape(()))
    assert_bits(value(s, ABC, "c"), f32(4))
    desc, whole = pulled(s.pull(2, gd(ABC), "q"), "q")
    assert (desc.key, desc.shape, desc.step) == (G, (4,), 0)
    assert_bits(whole, f32(1, 2, 3, 4))


def test_zero_d_and_zero_size_members_work_fused_and_alone():
    mem = [("z", ()), ("e", (0,)), ("x", (2,))]
    s = group(2, mem, f32(1, 2, 3))
    s.push(0, md(mem, "e", 1), np.zeros(0, np.float32), "e0")
    s.push(0, md(mem, "z", 1), np.array(10, np.float32), "z0")
    s.push(0, md(mem, "x", 1), f32(20, 30), "x0")
    replies = s.push(1, gd(mem, 1), f32(1, 1, 1), "g1")
    assert tokens(replies) == ["e0", "g1", "x0", "z0"]
    desc, e = pulled(s.pull(0, md(mem, "e", 1), "qe"), "qe")
    assert (desc.key, desc.shape, desc.step) == ("e", (0,), 1) and e.shape == (0,)
    desc, z = pulled(s.pull(0, md(mem, "z", 1), "qz"), "qz")
    assert (desc.key, desc.shape) == ("z", ()) and z.shape == ()
    assert_bits(value(s, mem, step=1), f32(11, 21, 31))


def test_a_member_pull_of_a_single_member_group_answers_with_the_member():
    """Regression: in a group of one member, a pull naming the member is answered as a whole-group pull.

    init(g, shape (4,), members [w: (2, 2)]); pull(w, shape (2, 2)). Expected: the reply is
    ArrayDesc('w', 0, 'float32', (2, 2), 0) with a (2, 2) array. Before the fix: ArrayDesc('g', ...,
    (4,), 0) with the flat (4,) array (``_value_reply`` tested ``hi - lo == len(names)``, true
    for the one member of a one-member group)."""
    mem = [("w", (2, 2))]
    s = group(2, mem, f32(1, 2, 3, 4))
    desc, w = pulled(s.pull(0, md(mem, "w"), "q"), "q")
    assert (desc.key, desc.shape) == ("w", (2, 2))
    assert_bits(w, f32(1, 2, 3, 4).reshape(2, 2))


# -- sync merges -----------------------------------------------------------------------------
# per rank, per member: rank-order sums of these differ from other orders in float32
ORDER_SENSITIVE = {0: flat([1e8, 1.0], 1.0, [-1e8]),
                   1: flat([1.0, 1e8], 1e8, [1.0]),
                   2: flat([-1e8, -1e8], -1e8, [1e8])}


def test_order_sensitive_values_really_depend_on_order():
    """Guard for the tests below: these values would expose any other summation order."""
    orders = {rank_sum([ORDER_SENSITIVE[r] for r in p]).tobytes()
              for p in itertools.permutations(range(3))}
    assert len(orders) > 1


@pytest.mark.parametrize("arrival", list(itertools.permutations(range(3))))
def test_fused_pushes_sum_in_rank_order_bitwise_whatever_the_arrival_order(arrival):
    s = group(3, ABC)
    for r in arrival:
        s.push(r, gd(ABC, 1), ORDER_SENSITIVE[r].copy(), ("p", r))
    expected = rank_sum([ORDER_SENSITIVE[r] for r in range(3)])
    assert_bits(value(s, ABC, step=1), expected)
    assert_bits(value(s, ABC, "a", 1), expected[0:2])
    assert_bits(value(s, ABC, "b", 1), expected[2].reshape(()))


@pytest.mark.parametrize("arrival", list(itertools.permutations(range(3))))
def test_fused_group_equals_separate_plain_keys_bitwise(arrival):
    """The same pushes to three plain keys give the same bytes as to a fused group."""
    fused = group(3, ABC)
    plain = ShardState(3)
    for key, shape in ABC:
        for r in range(3):
            plain.init(r, d(0, shape, key=key), np.zeros(shape, np.float32) if r == 0 else None, None)
    for r in arrival:
        fused.push(r, gd(ABC, 1), ORDER_SENSITIVE[r].copy(), None)
        for m, (key, shape) in enumerate(ABC):
            plain.push(r, d(1, shape, key=key), piece(ABC, ORDER_SENSITIVE[r], m), None)
    for key, shape in ABC:
        assert_bits(value(fused, ABC, key, 1), pulled(plain.pull(0, d(1, shape, key=key), "q"), "q")[1])


@pytest.mark.parametrize("seed", range(6))
def test_per_member_pushes_on_a_group(seed):
    """Every rank pushes each member on its own, members and ranks in a random order."""
    rng = np.random.default_rng(seed)
    s = group(3, ABC)
    events = [(r, m) for r in range(3) for m in range(len(ABC))]
    rng.shuffle(events)
    for r, m in events:
        key, _ = ABC[m]
        assert all(rep.error is None
                   for rep in s.push(r, md(ABC, key, 1), piece(ABC, ORDER_SENSITIVE[r], m), (r, key)))
    assert_bits(value(s, ABC, step=1), rank_sum([ORDER_SENSITIVE[r] for r in range(3)]))


@pytest.mark.parametrize("fused_ranks", [(0,), (1,), (0, 2), (1, 2)])
@pytest.mark.parametrize("arrival", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_mixed_fused_and_per_member_ranks_are_exact(fused_ranks, arrival):
    """Some ranks push the group fused, the others member by member (members reversed)."""
    s = group(3, ABC)
    for r in arrival:
        if r in fused_ranks:
            s.push(r, gd(ABC, 1), ORDER_SENSITIVE[r].copy(), (r, G))
            continue
        for m in reversed(range(len(ABC))):
            key, _ = ABC[m]
            s.push(r, md(ABC, key, 1), piece(ABC, ORDER_SENSITIVE[r], m), (r, key))
    assert_bits(value(s, ABC, step=1), rank_sum([ORDER_SENSITIVE[r] for r in range(3)]))


def test_member_steps_are_independent():
    """``a`` runs two steps while ``b`` runs one; a fused pull waits for the slowest member."""
    s = group(2, AB, flat([0, 0], [0, 0, 0]))
    for step in (1, 2):
        for r in (0, 1):
            assert all(rep.error is None
                       for rep in s.push(r, md(AB, "a", step), f32(step, 10 * r + step), (r, "a", step)))
    s.push(0, md(AB, "b", 1), f32(1, 2, 3), "b0")
    s.push(1, md(AB, "b", 1), f32(4, 5, 6), "b1")
    assert s.stats()["steps"] == {repr(("a", 0)): 2, repr(("b", 0)): 1}
    desc, a = pulled(s.pull(0, md(AB, "a", 2), "qa"), "qa")
    assert desc.step == 2
    assert_bits(a, f32(4, 14))                   # step 2 only: the sum replaces the value
    desc, whole = pulled(s.pull(0, gd(AB, 1), "q1"), "q1")
    assert desc.step == 1                        # the slowest member's step
    assert_bits(whole, flat([4, 14], [5, 7, 9]))
    assert s.pull(0, gd(AB, 2), "q2") == []      # b has not reached step 2
    # a fused push needs every member at the same count: a is at 2, b at 1
    assert isinstance(error_of(s.push(0, gd(AB, 2), np.ones(5, np.float32), "bad")), ProtocolError)
    s.push(0, md(AB, "b", 2), f32(1, 1, 1), "b0-2")
    replies = s.push(1, md(AB, "b", 2), f32(2, 2, 2), "b1-2")
    desc, whole = pulled(replies, "q2")
    assert desc.step == 2
    assert_bits(whole, flat([4, 14], [3, 3, 3]))


def test_fused_push_after_per_member_pushes_brings_members_back_in_step():
    s = group(2, AB)
    s.push(0, md(AB, "a", 1), f32(1, 1), None)
    s.push(0, md(AB, "b", 1), f32(1, 1, 1), None)
    s.push(0, gd(AB, 2), flat([2, 2], [2, 2, 2]), "f0")      # rank 0's members are in step again
    s.push(1, gd(AB, 1), flat([10, 10], [10, 10, 10]), "f1")
    replies = s.push(1, md(AB, "a", 2), f32(20, 20), "a1")
    assert tokens(replies) == ["a1"]                            # f0 still waits for b's step 2
    replies = s.push(1, md(AB, "b", 2), f32(20, 20, 20), "b1")
    assert tokens(replies) == ["b1", "f0"]
    assert_bits(value(s, AB, step=2), flat([22, 22], [22, 22, 22]))


# -- blocking workers ------------------------------------------------------------------------
def run_blocking(s, scripts, rng):
    """Workers that block on each pull until it is answered; a random runnable worker moves
    next. Returns the pull replies ``{(rank, index): array copy}``; fails on a deadlock."""
    pos, waiting, got = [0] * len(scripts), [None] * len(scripts), {}
    while True:
        runnable = [r for r, script in enumerate(scripts) if waiting[r] is None and pos[r] < len(script)]
        if not runnable:
            assert all(p == len(sc) for p, sc in zip(pos, scripts)) and not any(waiting), \
                f"deadlock: positions {pos}, waiting on {waiting}"
            return got
        r = int(rng.choice(runnable))
        op, desc, array = scripts[r][pos[r]]
        token = (r, pos[r])
        pos[r] += 1
        if op == "push":
            replies = s.push(r, desc, array, ("ack",) + token)
        else:
            waiting[r] = token
            replies = s.pull(r, desc, token)
        for rep in replies:
            assert rep.error is None, rep.error
            if rep.arrays:
                got[rep.token] = rep.arrays[0][1].copy()
                waiting[rep.token[0]] = None


@pytest.mark.parametrize("seed", range(10))
def test_per_key_loop_push_then_pull_each_member_never_deadlocks(seed):
    """Each rank: for every step, for every member: push it, then wait for its pull."""
    rng = np.random.default_rng(seed)
    n, steps = 3, 3
    pushes = {(r, step, key): (rng.standard_normal(shape) * 1e4).astype(np.float32)
              for r in range(n) for step in range(1, steps + 1) for key, shape in ABC}
    scripts = [[(op, md(ABC, key, step), pushes[r, step, key] if op == "push" else None)
                for step in range(1, steps + 1) for key, _ in ABC for op in ("push", "pull")]
               for r in range(n)]
    # rank 0 pushes the whole group and pulls it instead, on the middle step
    scripts[0][len(ABC) * 2:len(ABC) * 4] = [
        ("push", gd(ABC, 2), flat(*(pushes[0, 2, k] for k, _ in ABC))), ("pull", gd(ABC, 2), None)]
    got = run_blocking(group(n, ABC), scripts, rng)
    for r, script in enumerate(scripts):
        for i, (op, desc, _) in enumerate(script):
            if op != "pull":
                continue
            keys = [k for k, _ in ABC] if desc.key == G else [desc.key]
            assert_bits(got[r, i].reshape(-1), flat(*(rank_sum([pushes[q, desc.step, k] for q in range(n)])
                                                      for k in keys)))


# -- acks and parked pulls -------------------------------------------------------------------
def test_every_push_is_acked_once_and_only_when_its_steps_are_complete():
    s = group(2, AB)
    seen = []
    seen += s.push(0, gd(AB, 1), np.ones(5, np.float32), "f0")
    seen += s.push(1, md(AB, "b", 1), f32(1, 1, 1), "b1")
    assert tokens(seen) == ["b1"]                  # b complete; f0 also covers a
    seen += s.push(0, gd(AB, 2), np.ones(5, np.float32), "f0-2")
    assert tokens(seen) == ["b1"]
    seen += s.push(1, md(AB, "b", 2), f32(1, 1, 1), "b1-2")
    assert tokens(seen) == ["b1", "b1-2"]          # b ran ahead of a: its step 2 is complete
    seen += s.push(1, md(AB, "a", 1), f32(1, 1), "a1")
    assert tokens(seen) == ["a1", "b1", "b1-2", "f0"]
    seen += s.push(1, md(AB, "a", 2), f32(1, 1), "a1-2")
    assert tokens(seen) == ["a1", "a1-2", "b1", "b1-2", "f0", "f0-2"]
    assert all(rep.error is None and rep.arrays == [] for rep in seen)


def test_parked_pulls_get_the_value_of_their_step():
    s = group(2, AB, flat([1, 1], [1, 1, 1]))
    assert s.pull(0, md(AB, "a", 1), "qa") == []
    assert s.pull(1, gd(AB, 1), "qg") == []
    s.push(0, gd(AB, 1), flat([1e8, 1], [1, 2, 3]), None)
    replies = s.push(1, md(AB, "a", 1), f32(-1e8, 1e8), "a1")
    assert tokens(replies) == ["a1", "qa"]          # qg still waits for b
    desc, a = pulled(replies, "qa")
    assert (desc.key, desc.shape, desc.step) == ("a", (2,), 1)
    assert_bits(a, rank_sum([f32(1e8, 1), f32(-1e8, 1e8)]))
    replies = s.push(1, md(AB, "b", 1), f32(4, 5, 6), "b1")
    desc, whole = pulled(replies, "qg")
    assert (desc.key, desc.shape, desc.step) == (G, (5,), 1)
    assert_bits(whole, flat(rank_sum([f32(1e8, 1), f32(-1e8, 1e8)]), [5, 7, 9]))


def test_a_parked_pull_is_answered_even_when_the_pushes_want_no_ack():
    """Regression: pushes with ``token=None`` ("no ack wanted", per
    ``ShardState.push``) complete a step, but a pull parked on that step is never answered.

    pull(0, g step 1, "q") parks; push(0, g step 1, token None); push(1, g step 1, token None).
    Expected: the second push returns the reply to "q". Before the fix: [] and "q" stays parked for
    good: ``_complete_steps`` only looks at parked pulls ``if replies``, i.e. when some ack was
    due. (The server service always passes a token, so this shows through the pure API only.)"""
    s = group(2, AB)
    assert s.pull(0, gd(AB, 1), "q") == []
    s.push(0, gd(AB, 1), np.ones(5, np.float32), None)
    replies = s.push(1, gd(AB, 1), np.ones(5, np.float32), None)
    assert_bits(pulled(replies, "q")[1], np.full(5, 2, np.float32))


def test_parked_pull_answers_with_the_newest_completed_step():
    """Rank 1 ran ahead to step 2; rank 0's step-1 push completes steps 1 and 2 of ``a`` at once."""
    s = group(2, AB)
    s.push(1, md(AB, "a", 1), f32(1, 1), "a1")
    s.push(1, md(AB, "a", 2), f32(2, 2), "a1-2")
    assert s.pull(1, md(AB, "a", 2), "q2") == []
    assert s.pull(0, md(AB, "a", 1), "q1") == []
    replies = s.push(0, md(AB, "a", 1), f32(10, 10), "a0")
    assert tokens(replies) == ["a0", "a1", "q1"]
    assert_bits(pulled(replies, "q1")[1], f32(11, 11))
    replies = s.push(0, md(AB, "a", 2), f32(20, 20), "a0-2")
    assert tokens(replies) == ["a0-2", "a1-2", "q2"]
    assert_bits(pulled(replies, "q2")[1], f32(22, 22))


# -- async -----------------------------------------------------------------------------------
def test_async_group_applies_every_push_on_arrival_and_pulls_answer_at_once():
    s = group(2, AB, flat([1, 1], [1, 1, 1]), sync=False)
    assert tokens(s.push(1, gd(AB, 1), flat([1, 2], [3, 4, 5]), "f1")) == ["f1"]
    assert tokens(s.push(0, md(AB, "b", 1), f32(10, 10, 10), "b0")) == ["b0"]
    assert tokens(s.push(0, md(AB, "b", 2), f32(10, 10, 10), "b0-2")) == ["b0-2"]
    assert_bits(value(s, AB, step=5), flat([2, 3], [24, 25, 26]))    # no parking in async
    assert_bits(value(s, AB, "a", 7), f32(2, 3))
    assert s.stats()["steps"] == {repr(("a", 0)): 1, repr(("b", 0)): 3}


def test_async_group_with_optimizer_updates_member_by_member():
    opt = Momentum()
    s = group(1, AB, flat([1, 1], [1, 1, 1]), sync=False, optimizer=opt)
    s.push(0, gd(AB, 1), flat([4, 4], [4, 4, 4]), None)
    s.push(0, md(AB, "b", 2), f32(4, 4, 4), None)
    assert [c[:2] for c in opt.calls] == [("create", "a"), ("update", "a"), ("create", "b"),
                                          ("update", "b"), ("update", "b")]
    assert_bits(value(s, AB), flat([0, 0], [-1.9, -1.9, -1.9]))   # b: 1 - 1 - 0.25*(0.9*4 + 4)


# -- optimizer -------------------------------------------------------------------------------
def test_optimizer_sees_member_keys_and_member_shaped_views():
    opt = Momentum()
    s = group(2, ABC, optimizer=opt)
    for r in (1, 0):
        s.push(r, gd(ABC, 1), ORDER_SENSITIVE[r].copy(), None)
    s.push(0, md(ABC, "b", 2), np.array(1, np.float32), None)
    s.push(1, md(ABC, "b", 2), np.array(1, np.float32), None)
    assert opt.calls == [("create", "a", (2,)), ("update", "a", (2,), (2,)),
                         ("create", "b", ()), ("update", "b", (), ()),
                         ("create", "c", (1,)), ("update", "c", (1,), (1,)),
                         ("update", "b", (), ())]
    assert s.stats()["updates"] == 4


@pytest.mark.parametrize("seed", range(4))
def test_optimizer_on_a_group_equals_the_optimizer_on_separate_keys(seed):
    rng = np.random.default_rng(seed)
    n, steps = 3, 3
    start = flat([0.5, -0.5], 2.0, [3.0])
    grads = {(r, step): (rng.standard_normal(4) * 10.0 ** rng.integers(-2, 6, 4)).astype(np.float32)
             for r in range(n) for step in range(1, steps + 1)}
    fused = group(n, ABC, start, optimizer=Momentum())
    plain = ShardState(n)
    for m, (key, shape) in enumerate(ABC):
        for r in range(n):
            plain.init(r, d(0, shape, key=key), piece(ABC, start, m) if r == 0 else None, None)
    plain.set_optimizer(Momentum())
    for step in range(1, steps + 1):
        for r in rng.permutation(n):
            r = int(r)
            if (r + step) % 2:                       # fused on some steps, member by member on others
                fused.push(r, gd(ABC, step), grads[r, step].copy(), None)
            for m, (key, shape) in enumerate(ABC):
                plain.push(r, d(step, shape, key=key), piece(ABC, grads[r, step], m), None)
                if not (r + step) % 2:
                    fused.push(r, md(ABC, key, step), piece(ABC, grads[r, step], m), None)
    for key, shape in ABC:
        expected = pulled(plain.pull(0, d(steps, shape, key=key), "q"), "q")[1]
        assert_bits(value(fused, ABC, key, steps), expected)


def test_an_optimizer_error_on_one_member_reaches_everyone_waiting_on_the_group():
    class FailsOnB(Momentum):
        def update(self, key, weight, grad, state):
            if key == "b":
                raise RuntimeError("boom")
            super().update(key, weight, grad, state)

    s = group(2, AB, optimizer=FailsOnB())
    assert s.pull(1, md(AB, "b", 1), "qb") == []
    s.push(0, gd(AB, 1), np.ones(5, np.float32), "p0")
    replies = s.push(1, gd(AB, 1), np.ones(5, np.float32), "p1")
    assert tokens(replies) == ["p0", "p1", "qb"]
    assert all(isinstance(rep.error, OptimizerError) for rep in replies)
    assert isinstance(error_of(s.push(0, md(AB, "a", 2), f32(1, 1), "later")), OptimizerError)


# -- errors ----------------------------------------------------------------------------------
def test_wrong_member_shape_or_dtype_names_the_member():
    s = group(2, AB)
    err = error_of(s.push(0, d(1, (3,), key="a"), np.ones(3, np.float32), "t"))
    assert isinstance(err, ShapeMismatchError) and err.key == "a" and err.expected == (2,)
    assert "'a'" in str(err)
    err = error_of(s.pull(0, d(0, (2, 1), key="a"), "t"))
    assert isinstance(err, ShapeMismatchError) and err.key == "a"
    err = error_of(s.push(0, d(1, (3,), "float64", key="b"), np.ones(3), "t"))
    assert isinstance(err, DTypeMismatchError) and err.key == "b" and "'b'" in str(err)
    err = error_of(s.push(0, d(1, (4,), key=G), np.ones(4, np.float32), "t"))
    assert isinstance(err, ShapeMismatchError) and err.key == G
    # nothing was counted as a step: a correct push of step 1 is still accepted
    assert s.push(0, md(AB, "a", 1), f32(1, 1), "ok") == []


def test_push_step_out_of_sequence_is_a_protocol_error_for_members_and_groups():
    s = group(2, AB)
    assert isinstance(error_of(s.push(0, md(AB, "a", 2), f32(1, 1), "t")), ProtocolError)
    assert isinstance(error_of(s.push(0, gd(AB, 2), np.ones(5, np.float32), "t")), ProtocolError)
    s.push(0, md(AB, "a", 1), f32(1, 1), None)
    assert isinstance(error_of(s.push(0, md(AB, "a", 1), f32(1, 1), "t")), ProtocolError)
    # members at counts (1, 0): a fused push cannot be step 1 nor step 2
    assert isinstance(error_of(s.push(0, gd(AB, 1), np.ones(5, np.float32), "t")), ProtocolError)
    assert isinstance(error_of(s.push(0, gd(AB, 2), np.ones(5, np.float32), "t")), ProtocolError)
    assert s.push(0, md(AB, "b", 1), f32(1, 1, 1), None) == []    # still accepted after the errors


def test_double_init_of_a_group_is_an_error():
    s = group(2, AB)
    assert isinstance(error_of(s.init(1, gd(AB), None, "again", members=AB)), DoubleInitError)
    assert isinstance(error_of(s.init(0, gd(AB), np.zeros(5, np.float32), "again", members=AB)),
                      DoubleInitError)


def test_a_different_member_list_for_the_same_group_is_a_config_error():
    s = ShardState(2)
    assert [r.error for r in s.init(0, gd(AB), np.zeros(5, np.float32), "t0", members=AB)] == [None]
    other = [("a", (2,)), ("c", (3,))]
    err = error_of(s.init(1, gd(other), None, "t1", members=other))
    assert isinstance(err, ConfigError)
    reordered = [("b", (3,)), ("a", (2,))]
    s = ShardState(2)
    s.init(0, gd(AB), np.zeros(5, np.float32), "t0", members=AB)
    assert isinstance(error_of(s.init(1, gd(reordered), None, "t1", members=reordered)), ConfigError)


def test_a_different_member_list_from_a_worker_that_inits_before_rank0_is_a_config_error_for_it():
    """Regression: the first init to arrive fixes the member list, even from rank 1 (which has no value).

    Rank 1 inits g = [a, c], then rank 0 inits g = [a, b] with the value. Expected (as when rank 0
    comes first): rank 1, whose list differs from rank 0's, gets the ConfigError and rank 0's
    list is the one stored. Before the fix: rank 1's init succeeds, rank 0 gets a ConfigError that says
    "worker 0 initialised keys ['a', 'b'] ... but worker 0 initialised ['a', 'c']", and the
    group's members are a and c (rank 0's value under rank 1's names; key b is unknown)."""
    s = ShardState(2)
    other = [("a", (2,)), ("c", (3,))]
    replies = s.init(1, gd(other), None, "t1", members=other)
    replies += s.init(0, gd(AB), np.arange(5, dtype=np.float32), "t0", members=AB)
    assert only_error(replies, "t0") is None, "rank 0's init (the reference list) was rejected"
    assert isinstance(only_error(replies, "t1"), ConfigError)
    assert_bits(value(s, AB, "b"), f32(2, 3, 4))


def test_a_member_key_initialised_alone_after_it_was_grouped_is_a_config_error():
    s = ShardState(2)
    s.init(0, gd(AB), np.zeros(5, np.float32), "t0", members=AB)
    err = error_of(s.init(1, d(0, (2,), key="a"), None, "t1"))
    assert isinstance(err, ConfigError) and "'a'" in str(err)
    # and a group may not take a key another group holds
    err = error_of(s.init(1, d(0, (2,), key="h"), None, "t1", members=[("a", (2,))]))
    assert isinstance(err, ConfigError)


def test_grouping_a_key_another_worker_initialised_alone_is_a_config_error():
    s = ShardState(2)
    s.init(1, d(0, (2,), key="a"), None, "t1")
    err = error_of(s.init(0, gd(AB), np.zeros(5, np.float32), "t0", members=AB))
    assert isinstance(err, ConfigError) and "'a'" in str(err)


def test_a_group_whose_size_is_not_its_members_total_is_rejected_at_init():
    """Regression: init does not check that the group's shape is (sum of member sizes,).

    init(g, shape (5,), members a:(2,), b:(4,)) is accepted; every later push of g then raises
    a bare ValueError from numpy ("could not broadcast ... (5,) into shape (6,)") instead of
    replying, and member b cannot be viewed. Expected: the init is answered with an error."""
    s = ShardState(1)
    members = [("a", (2,)), ("b", (4,))]
    (rep,) = s.init(0, d(0, (5,), key=G), np.zeros(5, np.float32), "t", members=members)
    assert isinstance(rep.error, PSError)


# -- stats -----------------------------------------------------------------------------------
def test_stats_report_steps_per_member_and_count_key_pushes():
    s = group(2, ABC)
    s.push(0, gd(ABC, 1), np.ones(4, np.float32), None)         # 3 key-pushes
    s.push(1, md(ABC, "a", 1), f32(1, 1), None)                 # 1
    s.push(1, md(ABC, "c", 1), f32(1), None)                    # 1
    s.pull(0, gd(ABC, 0), "q")                                  # 3 key-pulls
    stats = s.stats()
    assert stats["steps"] == {repr(("a", 0)): 1, repr(("b", 0)): 0, repr(("c", 0)): 1}
    assert stats["pushes"] == [3, 2]
    assert stats["pulls"] == [3, 0]
    assert stats["keys"] == 1 and stats["held_bytes"] == 16


# -- the send guard --------------------------------------------------------------------------
def test_send_guard_counts_a_view_as_the_array_owning_its_memory():
    guard, owner, tracker = SendGuard(), np.zeros(6, np.float32), Tracker()
    guard.add(owner[2:4].reshape(2, 1), tracker)
    assert guard.busy(owner) and guard.busy(owner[:1]) and guard.busy(owner.reshape(2, 3))
    assert not guard.busy(np.zeros(6, np.float32))
    tracker.done = True
    assert not guard.busy(owner)


def test_a_member_view_still_sending_keeps_its_buffer_from_reuse():
    """Whole-group steps swap buffers; one holding a member reply still in flight is not reused."""
    guard = SendGuard()
    s = group(1, AB, guard=guard)
    s.push(0, gd(AB, 1), flat([1, 1], [1, 1, 1]), None)
    _, sending = pulled(s.pull(0, md(AB, "a", 1), "q"), "q")
    guard.add(sending, Tracker())                # the reply is on the wire
    for step in (2, 3, 4):
        s.push(0, gd(AB, step), np.full(5, step, np.float32), None)
    assert_bits(sending, f32(1, 1))
    assert_bits(value(s, AB, step=4), np.full(5, 4, np.float32))


def test_a_member_step_never_waits_for_a_send_of_the_value_it_writes_a_copy():
    """A reply still on the wire (its peer may never read it) must not stall the server: the
    step goes into a copy, and the bytes being sent keep the value they were sent with."""
    guard, tracker = SendGuard(), Tracker()
    s = group(1, AB, guard=guard)
    _, sending = pulled(s.pull(0, md(AB, "b", 0), "q"), "q")
    before = sending.copy()
    guard.add(sending, tracker)
    s.push(0, md(AB, "a", 1), f32(5, 5), None)   # only a completes: written into the value
    assert not tracker.waited
    assert_bits(sending, before)
    assert_bits(value(s, AB, "a", 1), f32(5, 5))


# -- randomized: random scripts against a per-key model --------------------------------------
SHAPES = [(), (0,), (1,), (2,), (3,), (2, 2), (1, 3)]


def random_values(rng, shape):
    n = size(shape)
    mags = 10.0 ** rng.integers(-3, 9, n)
    return (rng.standard_normal(n) * mags).astype(np.float32).reshape(shape)


def rank_script(rng, goal):
    """One rank's events: pushes until it has pushed member m ``goal[m]`` times, fused only when
    its members are in step; after some pushes, a pull of what it just pushed (step = its count),
    now and then a pull of a random member. Events: (op, members, step, fused)."""
    m, count, events = len(goal), np.zeros(len(goal), np.int64), []
    while (count < goal).any():
        left = np.flatnonzero(count < goal)
        fused = len(left) == m and count.min() == count.max() and rng.random() < 0.5
        covered = list(range(m)) if fused else [int(rng.choice(left))]
        count[covered] += 1
        events.append(("push", covered, int(count[covered[0]]), fused))
        if rng.random() < 0.4:
            events.append(("pull", covered, int(count[covered[0]]), fused))
        if rng.random() < 0.15:
            k = int(rng.integers(m))
            events.append(("pull", [k], int(count[k]), False))
    return events


def interleave(rng, lengths):
    """A random merge of the ranks' event lists, each rank's own order kept."""
    order = [r for r, n in enumerate(lengths) for _ in range(n)]
    rng.shuffle(order)
    return order


def run_random_case(seed, owns_pushes=False):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    members = [(f"m{i}", SHAPES[int(j)]) for i, j in enumerate(rng.integers(0, len(SHAPES), m))]
    names = [k for k, _ in members]
    goal = (np.full(m, rng.integers(0, 4)) if rng.random() < 0.5 else rng.integers(0, 4, m)).astype(np.int64)
    init = flat(*(random_values(rng, s) for _, s in members))
    s = group(n, members, init, owns_pushes=owns_pushes)
    scripts = [rank_script(rng, goal) for _ in range(n)]

    pushed = {(k, r): [] for k in range(m) for r in range(n)}   # the model: every push, per key
    arrived = np.zeros((n, m), np.int64)                        # pushes received, per rank per key

    def model(k, step):
        if step == 0:
            return piece(members, init, k)
        return rank_sum([pushed[k, r][step - 1] for r in range(n)])

    pending, pos = {}, [0] * n
    for r in interleave(rng, [len(sc) for sc in scripts]):
        op, covered, step, fused = scripts[r][pos[r]]
        token = (op, r, pos[r])
        pos[r] += 1
        desc = gd(members, step) if fused else md(members, names[covered[0]], step)
        if op == "push":
            parts = [random_values(rng, members[k][1]) for k in covered]
            for k, p in zip(covered, parts):
                pushed[k, r].append(p)
            arrived[r, covered] += 1
            replies = s.push(r, desc, flat(*parts).reshape(desc.shape), token)
        else:
            replies = s.pull(r, desc, token)
        pending[token] = (covered, step, fused)

        complete = arrived.min(axis=0)       # step i of key k: every rank pushed k i times
        due = {t for t, (cov, st, _) in pending.items() if complete[cov].min() >= st}
        got = [rep.token for rep in replies]
        assert len(got) == len(set(got)), f"seed {seed}: a token answered twice: {got}"
        assert set(got) == due, f"seed {seed}: answered {sorted(got)}, due {sorted(due)}"
        for rep in replies:
            assert rep.error is None, f"seed {seed}: {rep.error!r}"
            cov, _, was_fused = pending.pop(rep.token)
            if rep.token[0] == "push":
                assert rep.arrays == []
                continue
            (rdesc, array), = rep.arrays
            if was_fused:
                assert (rdesc.key, rdesc.shape, rdesc.step) == (G, (total(members),), int(complete.min()))
                expected = flat(*(model(k, complete[k]) for k in range(m)))
            else:
                k = cov[0]
                assert (rdesc.key, rdesc.shape, rdesc.step) == (names[k], members[k][1], int(complete[k]))
                expected = model(k, complete[k])
            assert_bits(array, expected)
    assert not pending, f"seed {seed}: never answered: {sorted(pending)}"
    assert_bits(value(s, members), flat(*(model(k, goal[k]) for k in range(m))))
    stats = s.stats()
    assert stats["steps"] == {repr((k, 0)): int(c) for k, c in zip(names, goal)}
    assert stats["pushes"] == [int(goal.sum())] * n


@pytest.mark.parametrize("owns_pushes", [False, True], ids=["copies-pushes", "sums-in-pushes"])
@pytest.mark.parametrize("block", range(8))
def test_random_scripts_match_the_per_key_model(block, owns_pushes):
    """200 seeded random cases (25 per test id): N in 1..3, 1..4 members with small shapes
    (0-d and zero-size included), fused and per-member pushes and pulls, random interleaving;
    also with the server's ``owns_pushes`` (a step's sum built in rank 0's pushed array)."""
    for seed in range(block * 25, block * 25 + 25):
        run_random_case(seed, owns_pushes)
