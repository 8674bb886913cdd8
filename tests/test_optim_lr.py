"""Schedules reproduce their formulas at every step and travel as nested specs."""
import math

import pytest

import psframe
from psframe.optim import lr as lrs


def test_goyal_warmup_then_step_decay():
    # warmup 0.1 -> 0.8 over 10 updates, then x0.1 at 50 and at 80
    s = lrs.Warmup(lrs.MultiStep(0.8, [50, 80], factor=0.1), steps=10, start_lr=0.1)
    for t in range(120):
        if t < 10:
            want = 0.1 + (0.8 - 0.1) * t / 10
        elif t < 50:
            want = 0.8
        elif t < 80:
            want = 0.8 * 0.1
        else:
            want = 0.8 * 0.1 * 0.1
        assert s(t) == pytest.approx(want, rel=1e-15, abs=0), t
    assert s(0) == 0.1 and s(10) == 0.8 and s(49) == 0.8


def test_multistep():
    s = lrs.MultiStep(1.0, [2, 5], factor=0.5)
    assert [s(t) for t in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_cosine():
    s = lrs.Cosine(0.4, total_steps=20, final_lr=0.01)
    for t in range(30):
        tt = min(t, 20)
        want = 0.01 + (0.4 - 0.01) * (1 + math.cos(math.pi * tt / 20)) / 2
        assert s(t) == pytest.approx(want, rel=1e-15), t
    assert s(0) == pytest.approx(0.4) and s(10) == pytest.approx(0.205) and s(25) == 0.01


def test_constant_and_warmup_into_constant():
    assert lrs.Constant(0.3)(12345) == 0.3
    s = lrs.Warmup(0.5, steps=4)   # a number after the warmup means Constant
    assert [s(t) for t in range(6)] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    assert lrs.Warmup(lrs.Constant(1.0), steps=0)(0) == 1.0


def test_scaled_lr_linear_scaling_rule():
    assert lrs.scaled_lr(0.1, 8192) == 3.2
    assert lrs.scaled_lr(0.1, 256) == 0.1
    assert lrs.scaled_lr(0.2, 512, base_batch=128) == 0.8


def test_nested_spec_round_trip():
    s = lrs.Warmup(lrs.Cosine(lrs.scaled_lr(0.1, 1024), 100, 0.0), steps=5, start_lr=0.01)
    spec = lrs.to_spec(s)
    assert spec["name"] == "warmup" and spec["config"]["after"]["name"] == "cosine"
    s2 = lrs.from_spec(spec)
    assert [s2(t) for t in range(120)] == [s(t) for t in range(120)]


def test_custom_schedule_registers():
    @lrs.register(name="test_halving")
    class Halving(lrs.Schedule):
        def __init__(self, base_lr, every):
            self.base_lr, self.every = base_lr, every

        def __call__(self, t):
            return self.base_lr * 0.5 ** (t // self.every)

    s = lrs.from_spec(lrs.to_spec(Halving(1.0, 3)))
    assert [s(t) for t in range(7)] == [1, 1, 1, .5, .5, .5, .25]


def test_bad_schedules_are_clear_errors():
    with pytest.raises(psframe.OptimizerError, match="unknown lr schedule 'nope'"):
        lrs.from_spec({"name": "nope", "config": {}})
    with pytest.raises(psframe.OptimizerError, match="milestones"):
        lrs.MultiStep(0.1, [80, 50])
    with pytest.raises(psframe.OptimizerError, match="total_steps"):
        lrs.Cosine(0.1, 0)
    with pytest.raises(psframe.OptimizerError, match="rejected its config"):
        lrs.from_spec({"name": "constant", "config": {"lr": 0.1, "bogus": 1}})
