"""The wire form of optimizers: registry, to_spec/from_spec, clear errors, checkpointable state."""
import msgpack
import numpy as np
import pytest

import psframe
import psframe.optim as optim
from psframe.optim import lr as lrs


def test_builtins_registered():
    assert {"sgd", "adam", "adamw", "rmsprop"} <= set(optim.registered())


@pytest.mark.parametrize("opt", [
    optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, rescale_grad=1 / 64,
              clip_gradient=5.0, multi_precision=True,
              lr_schedule=lrs.Warmup(lrs.MultiStep(0.8, [50, 80]), 10, start_lr=0.1)),
    optim.Adam(lr=np.float32(0.001), beta1=0.8),   # numpy scalars become Python numbers
    optim.AdamW(weight_decay=0.05, lr_schedule=lrs.Cosine(0.01, 100)),
    optim.RMSProp(momentum=0.9),
])
def test_spec_round_trip_through_msgpack(opt):
    spec = optim.to_spec(opt)
    wire = msgpack.unpackb(msgpack.packb(spec, use_bin_type=True), raw=False)
    opt2 = optim.from_spec(wire)
    assert type(opt2) is type(opt)
    assert optim.to_spec(opt2) == spec


def test_unregistered_name_is_clear_error():
    with pytest.raises(psframe.OptimizerError) as info:
        optim.from_spec({"name": "lamb_not_here", "config": {"lr": 0.1}})
    msg = str(info.value)
    assert "lamb_not_here" in msg and "@psframe.optim.register" in msg
    assert "PSFRAME_USER_MODULES" in msg and "--optimizer-module" in msg
    assert isinstance(info.value, psframe.PSError)


@pytest.mark.parametrize("spec", [None, "sgd", {"config": {}}, {"name": 3},
                                  {"name": "sgd", "config": [1]}, {"name": "sgd", "config": {1: 2}}])
def test_malformed_specs(spec):
    with pytest.raises(psframe.OptimizerError):
        optim.from_spec(spec)


def test_bad_config_from_wire_is_optimizer_error():
    with pytest.raises(psframe.OptimizerError, match="rejected its config"):
        optim.from_spec({"name": "sgd", "config": {"lr": 0.1, "no_such_arg": 1}})
    with pytest.raises(psframe.OptimizerError, match="momentum"):
        optim.from_spec({"name": "sgd", "config": {"momentum": "fast"}})
    with pytest.raises(psframe.OptimizerError, match="nesterov"):
        optim.SGD(nesterov=True)


def test_non_msgpack_config_names_the_field():
    @optim.register(name="test_objcfg")
    class ObjCfg(optim.SGD):
        def __init__(self, extra=None, **kw):
            super().__init__(**kw)
            self.extra = extra

    with pytest.raises(psframe.OptimizerError, match=r"ObjCfg\.extra"):
        optim.to_spec(ObjCfg(extra=object()))
    with pytest.raises(psframe.OptimizerError, match=r"ObjCfg\.extra"):
        optim.to_spec(ObjCfg(extra={"a": np.zeros(3)}))
    with pytest.raises(psframe.OptimizerError, match="lr_schedule"):
        optim.to_spec(optim.SGD(lr_schedule=lambda t: 0.1))   # a bare callable cannot travel


def test_unregistered_subclass_cannot_travel():
    class Mine(optim.SGD):
        pass

    with pytest.raises(psframe.OptimizerError, match="not registered"):
        optim.to_spec(Mine())


def test_missing_attribute_is_explained():
    @optim.register(name="test_forgetful")
    class Forgetful(optim.Optimizer):
        def __init__(self, beta=0.5, **kw):
            super().__init__(**kw)

    with pytest.raises(psframe.OptimizerError, match=r"self\.beta"):
        optim.to_spec(Forgetful())


def test_name_clash_and_reregistration():
    with pytest.raises(psframe.OptimizerError, match="already registered"):
        @optim.register(name="sgd")
        class Other(optim.Optimizer):
            pass
    with pytest.raises(psframe.OptimizerError, match="already registered"):
        @optim.register
        class SGD(optim.Optimizer):      # same qualname as the built-in: still protected
            pass

    def make():
        @optim.register
        class TestRedefined(optim.Optimizer):
            def step(self, key, weight, grad, state, lr, t):
                weight -= lr * grad
        return TestRedefined

    first, second = make(), make()       # a re-run definition (notebook, __main__ vs module)
    assert optim.from_spec({"name": "testredefined", "config": {}}).__class__ is second
    assert first is not second


def test_custom_optimizer_and_name_attribute():
    @optim.register
    class Lion(optim.Optimizer):
        name = "test_lion"

        def __init__(self, lr=1e-4, beta1=0.9, beta2=0.99, **common):
            super().__init__(lr=lr, **common)
            self.beta1, self.beta2 = beta1, beta2

        def create_slots(self, key, weight):
            return {"exp_avg": np.zeros_like(weight)}

        def step(self, key, weight, grad, state, lr, t):
            m = state["exp_avg"]
            weight -= lr * np.sign(self.beta1 * m + (1 - self.beta1) * grad)
            m *= self.beta2
            m += (1 - self.beta2) * grad

    spec = optim.to_spec(Lion(lr=0.1, rescale_grad=0.5))
    assert spec["name"] == "test_lion"
    opt = optim.from_spec(spec)
    w = np.ones(4)
    state = opt.create_state(7, w)
    opt.update(7, w, np.array([1.0, -1.0, 2.0, 0.0]), state)
    np.testing.assert_allclose(w, [0.9, 1.1, 0.9, 1.0])
    assert int(state["t"]) == 1


@pytest.mark.parametrize("opt", [optim.SGD(momentum=0.9), optim.Adam(), optim.RMSProp(momentum=0.5),
                                 optim.SGD(), optim.AdamW(multi_precision=True)])
def test_state_export_import_round_trip(opt):
    rng = np.random.default_rng(3)
    dtype = np.float16 if opt.multi_precision else np.float64
    w = rng.standard_normal(10).astype(dtype)
    grads = [rng.standard_normal(10).astype(dtype) for _ in range(6)]
    state = opt.create_state("k", w)
    for g in grads[:3]:
        opt.update("k", w, g, state)
    exported = opt.export_state(state)
    assert all(type(a) is np.ndarray for a in exported.values())
    assert exported["t"].dtype == np.int64 and int(exported["t"]) == 3
    # plain arrays: they survive an npz round trip (the checkpoint format), without pickle
    import io
    buf = io.BytesIO()
    np.savez(buf, **exported)
    buf.seek(0)
    loaded = dict(np.load(buf, allow_pickle=False))
    w2, state2 = w.copy(), opt.import_state(loaded)
    for g in grads[3:]:
        opt.update("k", w, g, state)
        opt.update("k", w2, g, state2)
    np.testing.assert_array_equal(w, w2)
    assert int(state2["t"]) == 6
    with pytest.raises(psframe.OptimizerError, match="update count"):
        opt.import_state({k: v for k, v in exported.items() if k != "t"})


def test_fresh_state_restarts_schedule_and_bias_correction():
    # re-set_optimizer on the servers: same weights, new state -> t starts from 0 again
    opt = optim.SGD(lr_schedule=lrs.MultiStep(1.0, [1]))
    w = np.zeros(2)
    s = opt.create_state(0, w)
    opt.update(0, w, np.ones(2), s)     # lr 1.0
    opt.update(0, w, np.ones(2), s)     # lr 0.1
    np.testing.assert_allclose(w, [-1.1, -1.1])
    s = opt.create_state(0, w)
    opt.update(0, w, np.ones(2), s)     # lr 1.0 again
    np.testing.assert_allclose(w, [-2.1, -2.1])


def test_shape_mismatch():
    opt = optim.SGD()
    w = np.zeros(3)
    with pytest.raises(psframe.OptimizerError, match="shape"):
        opt.update(0, w, np.zeros(4), opt.create_state(0, w))


def test_slices_are_independent():
    # a big key sliced over servers: each server updates its own slice with its own state
    opt = optim.Adam(lr=0.01)
    rng = np.random.default_rng(5)
    w = rng.standard_normal(10)
    parts = [w[:4].copy(), w[4:].copy()]
    states = [opt.create_state("big", p) for p in parts]
    full_state = opt.create_state("big", w)
    for _ in range(6):
        g = rng.standard_normal(10)
        opt.update("big", w, g, full_state)
        opt.update("big", parts[0], g[:4], states[0])
        opt.update("big", parts[1], g[4:], states[1])
    np.testing.assert_array_equal(np.concatenate(parts), w)


def test_integer_weights_and_foreign_state_are_explained():
    with pytest.raises(psframe.OptimizerError, match="floating-point"):
        optim.SGD().create_state("ids", np.zeros(3, dtype=np.int64))
    w = np.zeros(3)
    with pytest.raises(psframe.OptimizerError, match="super"):
        optim.SGD().update(0, w, np.ones(3), {})


def test_failing_step_names_optimizer_key_and_update():
    class Boom(optim.Optimizer):
        def step(self, key, weight, grad, state, lr, t):
            raise RuntimeError("boom")

    w = np.zeros(2)
    with pytest.raises(psframe.OptimizerError, match=r"Boom.step failed on key 'w' at update 0.*boom"):
        Boom().update("w", w, np.ones(2), Boom().create_state("w", w))
