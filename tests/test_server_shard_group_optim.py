"""Elementwise optimizers on fusion groups: a server updates a whole group of small keys with
one optimizer call on the group's flat value instead of one call per key.

The reference is the same shard with every key stored on its own (the per-key path, itself
checked against torch.optim in test_optim_dist): values must agree bit for bit, whatever mix of
whole-group and per-member pushes arrives, and a group whose members' update counts differ
must fall back to one call per key.
"""
import numpy as np
import pytest

import psframe.optim as optim
from psframe.errors import OptimizerError
from psframe.optim import lr as lrs
from psframe.protocol import ArrayDesc
from psframe.server.shard import ShardState

MEMBERS = [("a", (2, 3)), ("b", ()), ("c", (4,))]       # 11 elements: a = [0:6], b = [6], c = [7:11]
SIZES = [int(np.prod(s, dtype=np.int64)) for _, s in MEMBERS]
BOUNDS = np.cumsum([0] + SIZES)
TOTAL = int(BOUNDS[-1])
N = 3          # workers

OPTIMIZERS = {
    "sgd-nesterov": (lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), "float32"),
    "adam-schedule": (lambda: optim.Adam(lr=0.01, weight_decay=0.01, rescale_grad=0.5,
                                         lr_schedule=lrs.Cosine(0.02, 5)), "float32"),
    "adamw-clip": (lambda: optim.AdamW(lr=0.01, weight_decay=0.1, clip_gradient=1.5), "float64"),
    "rmsprop-momentum": (lambda: optim.RMSProp(lr=0.01, momentum=0.9, weight_decay=0.01), "float32"),
    "sgd-multi-precision": (lambda: optim.SGD(lr=0.1, momentum=0.9, multi_precision=True), "float16"),
}


def counted(opt):
    """``opt`` with its ``step`` calls counted in ``opt.steps``."""
    opt.steps, step = 0, opt.step

    def counting(*args):
        opt.steps += 1
        return step(*args)
    opt.step = counting
    return opt


def member(flat_array, m):
    return flat_array[BOUNDS[m]:BOUNDS[m + 1]].reshape(MEMBERS[m][1]).copy()


def desc(key, shape, dtype, step):
    return ArrayDesc(key, 0, dtype, shape, step)


def ok(replies):
    assert all(r.error is None for r in replies), [r.error for r in replies]
    return replies


class Pair:
    """The same keys twice: fused as group "g" in ``fused``, one by one in ``plain``."""

    def __init__(self, dtype, sync=True, seed=0):
        self.dtype, self.rng = dtype, np.random.default_rng(seed)
        start = self.rng.standard_normal(TOTAL).astype(dtype)
        self.fused, self.plain = ShardState(N, sync=sync), ShardState(N, sync=sync)
        for r in list(range(1, N)) + [0]:
            ok(self.fused.init(r, desc("g", (TOTAL,), dtype, 0), start if r == 0 else None, None,
                               members=MEMBERS))
            for m, (key, shape) in enumerate(MEMBERS):
                ok(self.plain.init(r, desc(key, shape, dtype, 0), member(start, m) if r == 0 else None, None))

    def set_optimizer(self, make):
        self.fused.set_optimizer(counted(optim.from_spec(optim.to_spec(make()))))
        self.plain.set_optimizer(counted(optim.from_spec(optim.to_spec(make()))))

    def grad(self):
        return (self.rng.standard_normal(TOTAL) * 3.0).astype(self.dtype)

    def push_members(self, r, step, grad, keys=None):
        for m, (key, shape) in enumerate(MEMBERS):
            if keys is None or key in keys:
                ok(self.fused.push(r, desc(key, shape, self.dtype, step), member(grad, m), None))
        self._push_plain(r, step, grad, keys)

    def push_group(self, r, step, grad):
        ok(self.fused.push(r, desc("g", (TOTAL,), self.dtype, step), grad.copy(), None))
        self._push_plain(r, step, grad)

    def _push_plain(self, r, step, grad, keys=None):
        for m, (key, shape) in enumerate(MEMBERS):
            if keys is None or key in keys:
                ok(self.plain.push(r, desc(key, shape, self.dtype, step), member(grad, m), None))

    def assert_same(self, steps):
        for (key, shape), step in zip(MEMBERS, steps):
            (_, got), = ok(self.fused.pull(0, desc(key, shape, self.dtype, step), "q"))[0].arrays
            (_, want), = ok(self.plain.pull(0, desc(key, shape, self.dtype, step), "q"))[0].arrays
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (key, got, want)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_one_update_per_whole_group_is_bitwise_the_per_key_update(name):
    make, dtype = OPTIMIZERS[name]
    pair = Pair(dtype)
    pair.set_optimizer(make)
    for r in range(N):                    # step 1 key by key: members get their own state first
        pair.push_members(r, 1, pair.grad())
    pair.assert_same([1, 1, 1])
    for step in range(2, 6):              # then whole groups; on odd steps one rank goes key by
        ranks = [int(r) for r in pair.rng.permutation(N)]     # key, first: the group completes whole
        for r in ranks:
            if step % 2 and r == ranks[0]:
                pair.push_members(r, step, pair.grad())
            else:
                pair.push_group(r, step, pair.grad())
        pair.assert_same([step] * 3)
    assert pair.plain.optimizer.steps == 5 * len(MEMBERS)
    assert pair.fused.optimizer.steps == len(MEMBERS) + 4       # one call per whole-group step
    assert pair.fused.stats()["updates"] == pair.plain.stats()["updates"] == 5 * len(MEMBERS)


def test_members_at_different_update_counts_are_updated_one_by_one():
    pair = Pair("float32", seed=1)
    for r in range(N):                    # b is one step ahead when the optimizer is set
        pair.push_members(r, 1, pair.grad(), keys={"b"})
    pair.set_optimizer(lambda: optim.Adam(lr=0.01))
    for r in range(N):                    # a and c catch up: steps agree, update counts do not
        pair.push_members(r, 1, pair.grad(), keys={"a", "c"})
    for step in (2, 3):
        for r in range(N):
            pair.push_group(r, step, pair.grad())
        pair.assert_same([step] * 3)
    assert pair.fused.optimizer.steps == pair.plain.optimizer.steps == 2 + 2 * 3


def test_an_async_group_under_an_elementwise_optimizer_matches_its_keys():
    pair = Pair("float32", sync=False, seed=2)
    pair.set_optimizer(lambda: optim.RMSProp(lr=0.05, momentum=0.5))
    for step in range(1, 4):
        for r in range(N):
            pair.push_group(r, step, pair.grad())
    pair.assert_same([0, 0, 0])           # async pulls answer at once
    assert pair.fused.optimizer.steps == 3 * N


def test_a_second_set_optimizer_starts_the_group_state_afresh():
    pair, step = Pair("float32", seed=3), 0
    for make in (lambda: optim.Adam(lr=0.01), lambda: optim.SGD(lr=0.1, momentum=0.9)):
        pair.set_optimizer(make)
        for _ in range(2):
            step += 1
            for r in range(N):
                pair.push_group(r, step, pair.grad())
        pair.assert_same([step] * 3)
    assert pair.fused.optimizer.steps == 2


def test_an_optimizer_that_claims_elementwise_with_other_state_fails_with_the_fix():
    @optim.register(name="test-claims-elementwise")
    class PerKeyNorm(optim.Optimizer):
        elementwise = True

        def create_slots(self, key, weight):
            return {"norm": np.zeros((), weight.dtype)}

        def step(self, key, weight, grad, state, lr, t):
            state["norm"][...] = np.sqrt((grad * grad).sum())
            weight -= lr * grad / (state["norm"] + 1)

    pair = Pair("float32", seed=4)
    pair.fused.set_optimizer(PerKeyNorm(lr=0.1))
    replies = []
    for r in range(N):
        replies += pair.fused.push(r, desc("g", (TOTAL,), "float32", 1), pair.grad(), f"p{r}")
    assert sorted(r.token for r in replies) == ["p0", "p1", "p2"]
    errors = [r.error for r in replies]
    assert all(isinstance(e, OptimizerError) for e in errors)
    assert "elementwise = True" in str(errors[0]) and "'norm'" in str(errors[0])
    assert "set elementwise = False" in str(errors[0])
