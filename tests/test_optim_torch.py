"""Built-in optimizers vs torch.optim of the same name: float64, 6 steps, max abs error < 1e-9."""
import numpy as np
import pytest

import psframe.optim as optim
from psframe.optim import lr as lrs
from conftest import optional_import, requires

torch = optional_import("torch")
needs_torch = pytest.fixture(autouse=True)(requires(torch, "the torch package"))

STEPS = 6
TOL = 1e-9

TORCH = {"SGD": "SGD", "Adam": "Adam", "AdamW": "AdamW", "RMSProp": "RMSprop", "Adagrad": "Adagrad"}
# Option sets per built-in (the optimizer's own arguments).
CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, beta1=0.85)),
    ("RMSProp", dict()),
    ("RMSProp", dict(lr=0.02, alpha=0.9, eps=1e-6)),
    ("RMSProp", dict(lr=0.01, momentum=0.9)),
    ("RMSProp", dict(lr=0.01, momentum=0.5, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-6)),
]
COMMON = {
    "plain": dict(),
    "rescale": dict(rescale_grad=0.25),
    "clip": dict(clip_gradient=0.5),
    "schedule": dict(lr_schedule=lrs.Warmup(lrs.MultiStep(0.05, [4], factor=0.1), 3, 0.01)),
    "all": dict(rescale_grad=0.5, clip_gradient=0.4,
                lr_schedule=lrs.Cosine(0.05, total_steps=5, final_lr=0.001)),
}


def torch_kwargs(kwargs):
    kw = dict(kwargs)
    if "beta1" in kw or "beta2" in kw:
        kw["betas"] = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
    return kw


def reference(name, kwargs, common, w0, grads):
    """torch.optim on the same gradients, with rescale/clip applied to the gradient first and
    the schedule written into the param group before each step."""
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = getattr(torch.optim, TORCH[name])([p], **torch_kwargs(kwargs))
    for t, g in enumerate(grads):
        g = g * common.get("rescale_grad", 1.0)
        if common.get("clip_gradient") is not None:
            g = np.clip(g, -common["clip_gradient"], common["clip_gradient"])
        if common.get("lr_schedule") is not None:
            opt.param_groups[0]["lr"] = common["lr_schedule"](t)
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy()


def ours(name, kwargs, common, w0, grads, via_spec=True):
    opt = getattr(optim, name)(**kwargs, **common)
    if via_spec:   # what the servers run: the optimizer rebuilt from its wire spec
        opt = optim.from_spec(optim.to_spec(opt))
    w = w0.copy()
    state = opt.create_state("w", w)
    for g in grads:
        g_before = g.copy()
        opt.update("w", w, g, state)
        np.testing.assert_array_equal(g, g_before)   # the summed gradient is never modified
    assert int(state["t"]) == len(grads)
    return w


def data(seed=0, shape=(3, 5), dtype=np.float64):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(STEPS)]
    return w0, grads


MAX_ERR = {}


@pytest.mark.parametrize("common_name", list(COMMON))
@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_torch(name, kwargs, common_name):
    common = COMMON[common_name]
    w0, grads = data()
    got = ours(name, kwargs, common, w0, grads)
    want = reference(name, kwargs, common, w0, grads)
    err = float(np.abs(got - want).max())
    MAX_ERR[name] = max(MAX_ERR.get(name, 0.0), err)
    assert err < TOL, f"{name}{kwargs}{common}: max abs err {err}"
    assert np.abs(got - w0).max() > 1e-4   # the update really moved the weights


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSProp"])
def test_multi_precision_float16_tracks_float32(name):
    kwargs = dict(lr=0.01, weight_decay=0.01) if name != "SGD" else dict(lr=0.1, momentum=0.9)
    w32, grads32 = data(seed=1, dtype=np.float32)
    w16 = w32.astype(np.float16)
    grads16 = [g.astype(np.float16) for g in grads32]
    # float32 reference on the same (float16) inputs
    ref = w16.astype(np.float32)
    opt32 = getattr(optim, name)(**kwargs)
    s32 = opt32.create_state("w", ref)
    opt16 = optim.from_spec(optim.to_spec(getattr(optim, name)(multi_precision=True, **kwargs)))
    w = w16.copy()
    s16 = opt16.create_state("w", w)
    assert s16["weight32"].dtype == np.float32
    for g in grads16:
        opt32.update("w", ref, g.astype(np.float32), s32)
        opt16.update("w", w, g, s16)
    assert w.dtype == np.float16
    np.testing.assert_array_equal(s16["weight32"], ref)            # master == float32 run
    np.testing.assert_array_equal(w, ref.astype(np.float16))       # weight == rounded master
    want = reference(name, kwargs, {}, w16.astype(np.float32), [g.astype(np.float32) for g in grads16])
    assert np.abs(s16["weight32"] - want).max() < 1e-5


def test_report_max_errors():
    """Not an assertion of its own: prints the largest error per optimizer seen above (-s)."""
    print("max abs err vs torch:", {k: f"{v:.2e}" for k, v in sorted(MAX_ERR.items())})


# The optimizers' step() works in one scratch array; these are the same updates written the
# plain way, one numpy temporary per operation: float32 results must agree bit for bit.
def _adam_reference(w, g, m, v, t, lr, b1, b2, eps, wd, decoupled):
    if wd:
        if decoupled:
            w *= 1.0 - lr * wd
        else:
            g = g + wd * w
    m += (1.0 - b1) * (g - m)
    v *= b2
    v += (1.0 - b2) * g * g
    n = t + 1
    denom = np.sqrt(v) / (1.0 - b2 ** n) ** 0.5
    denom += eps
    w -= lr / (1.0 - b1 ** n) * (m / denom)


def _rmsprop_reference(w, g, sq, buf, lr, alpha, eps, momentum, wd):
    if wd:
        g = g + wd * w
    sq *= alpha
    sq += (1.0 - alpha) * g * g
    avg = np.sqrt(sq)
    avg += eps
    if momentum:
        buf *= momentum
        buf += g / avg
        w -= lr * buf
    else:
        w -= lr * (g / avg)


@pytest.mark.parametrize("name,kwargs", [
    ("Adam", dict(lr=0.01)), ("Adam", dict(lr=0.01, beta1=0.8, eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("RMSProp", dict(lr=0.01)), ("RMSProp", dict(lr=0.01, momentum=0.9, weight_decay=0.01))])
def test_scratch_array_updates_are_bitwise_the_plain_formulas(name, kwargs):
    rng = np.random.default_rng(7)
    opt = getattr(optim, name)(**kwargs)
    w = rng.standard_normal(1000).astype(np.float32)
    ref_w, state = w.copy(), opt.create_state("k", w)
    ref = {k: np.array(a, copy=True) for k, a in state.items()}
    for t in range(5):
        g = (rng.standard_normal(1000) * 10.0 ** rng.integers(-3, 3, 1000)).astype(np.float32)
        opt.update("k", w, g, state)
        if name.startswith("Adam"):
            _adam_reference(ref_w, g, ref["exp_avg"], ref["exp_avg_sq"], t, opt.lr, opt.beta1,
                            opt.beta2, opt.eps, opt.weight_decay, opt.decoupled)
        else:
            _rmsprop_reference(ref_w, g, ref["square_avg"], ref.get("momentum"), opt.lr, opt.alpha,
                               opt.eps, opt.momentum, opt.weight_decay)
        assert w.tobytes() == ref_w.tobytes(), (name, kwargs, t)
