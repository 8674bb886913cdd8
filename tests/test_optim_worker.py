"""Worker-side mode and server-side mode on the in-process ``local`` kind give the optimizer's own result."""
import numpy as np
import pytest

import psframe
import psframe.optim as optim


def direct(opt, w0, grads):
    w = w0.copy()
    state = opt.create_state("w", w)
    for g in grads:
        opt.update("w", w, g, state)
    return w


@pytest.fixture
def problem():
    rng = np.random.default_rng(11)
    return rng.standard_normal(50), [rng.standard_normal(50) for _ in range(6)]


def test_worker_optimizer_on_local_kind(problem):
    w0, grads = problem
    opt = optim.Adam(lr=0.01, weight_decay=0.01, rescale_grad=0.5)
    with psframe.create("local") as kv:
        wopt = optim.WorkerOptimizer(opt, kv)
        w = np.zeros_like(w0)
        kv_w0 = w0.copy()
        wopt.init("w", kv_w0)
        w[...] = kv_w0
        for g in grads:
            wopt.step("w", w, g)
        exported = wopt.export_state()
    np.testing.assert_array_equal(w, direct(optim.Adam(lr=0.01, weight_decay=0.01,
                                                       rescale_grad=0.5), w0, grads))
    assert int(exported["w"]["t"]) == 6
    wopt.import_state(exported)
    assert int(wopt.states["w"]["t"]) == 6


def test_worker_optimizer_needs_an_optimizer():
    with pytest.raises(psframe.OptimizerError, match="Optimizer"):
        optim.WorkerOptimizer(lambda w, g: None, kv=None)


def test_server_side_on_local_kind(problem):
    w0, grads = problem
    opt = optim.RMSProp(lr=0.01, momentum=0.9)
    with psframe.create("local") as kv:
        kv.set_optimizer(opt)
        w = w0.copy()
        kv.init("w", w)
        for g in grads:
            kv.push("w", g)
            kv.pull("w", out=w)
    np.testing.assert_array_equal(w, direct(optim.RMSProp(lr=0.01, momentum=0.9), w0, grads))
