"""Optimizers through real jobs: ``psframe-launch -n 2 -s 2`` with a key sliced over both servers.

Each test writes its worker script into ``tmp_path``; rank 0 (or every rank) saves the pulled
weights as ``.npz`` (no pickle) and the test checks them against ``torch.optim`` run here on the
summed gradients. ``PSFRAME_BIGARRAY_BOUND=1000`` makes the 1500-element key sliced cheaply.
"""
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import psframe.optim as optim
from psframe.optim import lr as lrs
from conftest import optional_import, requires

torch = optional_import("torch")
needs_torch = pytest.fixture(autouse=True)(requires(torch, "the torch package"))

pytestmark = pytest.mark.integration

N, S = 2, 2
BOUND = 1000
SHAPES = [(7,), (1500,)]          # a small key and a key above the slicing bound
STEPS = 6
LAUNCH = os.path.join(os.path.dirname(sys.executable), "psframe-launch")
if not os.path.exists(LAUNCH):       # pytest run from outside the venv that has psframe
    LAUNCH = shutil.which("psframe-launch") or LAUNCH
TIME_FACTOR = float(os.environ.get("PSFRAME_TEST_TIME_FACTOR", "1"))


# Deterministic data per (case, key, step, rank), so the test can recompute every worker's
# gradient; the worker scripts get these two functions pasted in (DATA_CODE).
def initial(case, k, shape, dtype="float64"):
    return np.random.default_rng([case, k, 999]).standard_normal(shape).astype(dtype)


def gradient(case, k, step, rank, shape, dtype="float64"):
    return np.random.default_rng([case, k, step, rank]).standard_normal(shape).astype(dtype)


DATA_CODE = "import numpy as np\n\n" + inspect.getsource(initial) + "\n" + inspect.getsource(gradient)


def launch(tmp_path, script, *args, n=N, s=S, extra=(), timeout=45):
    path = tmp_path / "job.py"
    path.write_text(DATA_CODE + textwrap.dedent(script))
    cmd = [LAUNCH, "-n", str(n), "-s", str(s), "--env", f"PSFRAME_BIGARRAY_BOUND={BOUND}",
           *extra, str(path), *map(str, args)]
    return run_launcher(cmd, tmp_path, timeout)


def run_launcher(cmd, cwd, timeout):
    """Run ``cmd``; on a hang, SIGINT the launcher (it stops its whole job) and fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=timeout * TIME_FACTOR)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)     # the launcher then stops every process of the job
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout * TIME_FACTOR:.0f} s "
                    f"(job hung):\n{out[-6000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def summed(case, k, step, shape, dtype="float64", n=N):
    acc = gradient(case, k, step, 0, shape, dtype)   # the servers sum in rank order
    for r in range(1, n):
        acc = acc + gradient(case, k, step, r, shape, dtype)
    return acc


def torch_run(opt, w0, grads):
    """``torch.optim`` of the same name and arguments on ``grads`` (rescale/clip/schedule done here)."""
    cfg = opt.get_config()
    kw = {k: cfg[k] for k in ("lr", "momentum", "nesterov", "weight_decay", "eps", "alpha")
          if k in cfg}
    if "beta1" in cfg:
        kw["betas"] = (cfg["beta1"], cfg["beta2"])
    name = {"SGD": "SGD", "Adam": "Adam", "AdamW": "AdamW", "RMSProp": "RMSprop"}[type(opt).__name__]
    p = torch.nn.Parameter(torch.tensor(w0))
    topt = getattr(torch.optim, name)([p], **kw)
    for t, g in enumerate(grads):
        g = g * opt.rescale_grad
        if opt.clip_gradient is not None:
            g = np.clip(g, -opt.clip_gradient, opt.clip_gradient)
        topt.param_groups[0]["lr"] = opt.learning_rate(t)
        p.grad = torch.tensor(g, dtype=p.dtype)
        topt.step()
    return p.detach().numpy()


SERVER_CASES = [
    optim.SGD(lr=0.1),
    optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    optim.SGD(lr=0.05, momentum=0.9, rescale_grad=0.5, clip_gradient=1.0,
              lr_schedule=lrs.Warmup(lrs.MultiStep(0.1, [4]), steps=3, start_lr=0.01)),
    optim.Adam(lr=0.01, weight_decay=0.01),
    optim.Adam(lr=0.01, beta1=0.8, rescale_grad=0.25, lr_schedule=lrs.Cosine(0.02, 5)),
    optim.AdamW(lr=0.01, weight_decay=0.1, clip_gradient=1.5),
    optim.RMSProp(lr=0.01),
    optim.RMSProp(lr=0.01, alpha=0.9, momentum=0.9, weight_decay=0.01, rescale_grad=0.5),
]
WORKER_CASES = [optim.SGD(lr=0.1, momentum=0.9), optim.Adam(lr=0.01, rescale_grad=0.5)]
MP_CASE = optim.SGD(lr=0.1, momentum=0.9, multi_precision=True)
PHASES = [optim.SGD(lr=0.1, momentum=0.9), optim.Adam(lr=0.01, beta1=0.5)]

MATCH_SCRIPT = '''
import json, sys
import psframe, psframe.optim as optim

def run(kv, case, spec, dtype, worker_side):
    keys = [f"c{case}k{k}" for k in range(len(SHAPES))]
    opt = optim.from_spec(spec)
    wopt = optim.WorkerOptimizer(opt, kv) if worker_side else None
    if not worker_side:
        kv.set_optimizer(opt)
    ws = [initial(case, k, shape, dtype) for k, shape in enumerate(SHAPES)]
    for key, w in zip(keys, ws):
        (wopt.init if worker_side else kv.init)(key, w)
    for step in range(STEPS):
        for k, (key, w) in enumerate(zip(keys, ws)):
            g = gradient(case, k, step, kv.rank, SHAPES[k], dtype)
            if worker_side:
                wopt.step(key, w, g)
            else:
                kv.push(key, g)
        if not worker_side:
            for key, w in zip(keys, ws):
                kv.pull(key, out=w)
    return dict(zip(keys, ws))

def main(cases_file, phases_file, out_prefix):
    cases = json.load(open(cases_file))
    results = {}
    with psframe.create("dist_sync") as kv:
        assert kv.num_workers == 2 and kv.type == "dist_sync"
        # worker-side cases first: set_optimizer cannot be undone on the servers
        for c in sorted(cases, key=lambda c: not c["worker_side"]):
            results.update(run(kv, c["case"], c["spec"], c["dtype"], c["worker_side"]))
        # fine-tuning phases: a second set_optimizer keeps the weights, starts fresh state
        ws = [initial(300, k, shape) for k, shape in enumerate(SHAPES)]
        for k, w in enumerate(ws):
            kv.init(f"phase{k}", w)
        for phase, spec in enumerate(json.load(open(phases_file))):
            kv.set_optimizer(optim.from_spec(spec))
            for step in range(3):
                for k, w in enumerate(ws):
                    kv.push(f"phase{k}", gradient(300, k, 3 * phase + step, kv.rank, SHAPES[k]))
                for k, w in enumerate(ws):
                    kv.pull(f"phase{k}", out=w)
        results.update({f"phase{k}": w for k, w in enumerate(ws)})
        kv.barrier()
    import numpy as np
    np.savez(f"{out_prefix}{kv.rank}.npz", **results)
    print("MATCH-DONE", kv.rank)

if __name__ == "__main__":
    main(*sys.argv[1:])
'''


def test_builtins_match_torch_on_two_workers_two_servers(tmp_path):
    cases = []
    for i, opt in enumerate(SERVER_CASES):
        cases.append(dict(case=i, spec=optim.to_spec(opt), dtype="float64", worker_side=False))
    for i, opt in enumerate(WORKER_CASES, start=100):
        cases.append(dict(case=i, spec=optim.to_spec(opt), dtype="float64", worker_side=True))
    cases.append(dict(case=200, spec=optim.to_spec(MP_CASE), dtype="float16", worker_side=False))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "phases.json").write_text(json.dumps([optim.to_spec(o) for o in PHASES]))
    script = f"SHAPES = {SHAPES!r}\nSTEPS = {STEPS}\n" + MATCH_SCRIPT
    out = launch(tmp_path, script, tmp_path / "cases.json", tmp_path / "phases.json",
                 tmp_path / "result")
    assert out.count("MATCH-DONE") == N
    got = [dict(np.load(tmp_path / f"result{r}.npz", allow_pickle=False)) for r in range(N)]

    errors = {}
    for c in cases:
        opt = optim.from_spec(c["spec"])
        for k, shape in enumerate(SHAPES):
            key = f"c{c['case']}k{k}"
            if c["dtype"] == "float16":
                continue
            w0 = initial(c["case"], k, shape)
            grads = [summed(c["case"], k, step, shape) for step in range(STEPS)]
            want = torch_run(opt, w0, grads)
            for r in range(N):
                err = float(np.abs(got[r][key] - want).max())
                errors[f"{type(opt).__name__}#{c['case']}/{shape[0]}"] = err
                assert err < 1e-9, f"{c} key {key} rank {r}: max abs err {err} vs torch"
                assert np.abs(got[r][key] - w0).max() > 1e-3
            if c["worker_side"]:      # replicas stay bitwise identical
                np.testing.assert_array_equal(got[0][key], got[1][key])
    # two phases: torch SGD for 3 steps, then a fresh torch Adam on the same weights
    for k, shape in enumerate(SHAPES):
        w = initial(300, k, shape)
        for phase, opt in enumerate(PHASES):
            w = torch_run(opt, w, [summed(300, k, 3 * phase + step, shape) for step in range(3)])
        for r in range(N):
            err = float(np.abs(got[r][f"phase{k}"] - w).max())
            errors[f"phases/{shape[0]}"] = err
            assert err < 1e-9, f"re-set_optimizer phases, key phase{k}: max abs err {err}"
    print("max abs err vs torch:", max(errors.values()), errors)

    # multi_precision: float16 weights, float32 master on the servers, vs a float32 reference
    for k, shape in enumerate(SHAPES):
        key = f"c200k{k}"
        w16 = got[0][key]
        assert w16.dtype == np.float16
        w0 = initial(200, k, shape, "float16").astype(np.float32)
        grads = [summed(200, k, step, shape, "float16").astype(np.float32) for step in range(STEPS)]
        ref = w0.copy()
        ref_opt = optim.SGD(lr=0.1, momentum=0.9)
        state = ref_opt.create_state(key, ref)
        for g in grads:
            ref_opt.update(key, ref, g, state)
        np.testing.assert_array_equal(w16, ref.astype(np.float16))
        want = torch_run(ref_opt, w0, grads)                      # torch in float32
        assert np.abs(w16.astype(np.float32) - want).max() <= 2.0 ** -10 * np.abs(want).max()


CUSTOM_SCRIPT = '''
import os, sys
import numpy as np
import psframe, psframe.optim as optim


@optim.register
class SignMomentum(optim.Optimizer):
    """A test-only custom optimizer: w -= lr * sign(m), m = beta * m + grad."""

    def __init__(self, lr=0.01, beta=0.5, **common):
        super().__init__(lr=lr, **common)
        self.beta = beta

    def create_slots(self, key, weight):
        return {"m": np.zeros_like(weight)}

    def step(self, key, weight, grad, state, lr, t):
        m = state["m"]
        m *= self.beta
        m += grad
        weight -= lr * np.sign(m)


@optim.register
class ServerPicky(optim.SGD):
    """Builds on workers, refuses to build on servers: a config the servers reject."""

    def __init__(self, **kw):
        if os.environ.get("PSFRAME_ROLE") == "server":
            raise ValueError("ServerPicky refuses to run on a server")
        super().__init__(**kw)


if os.environ.get("PSFRAME_ROLE") == "worker":
    @optim.register
    class WorkersOnly(optim.SGD):
        """Registered on the workers only: the servers must answer with an error, not import."""


def expect_error(kv, make, what):
    try:
        kv.set_optimizer(make())
    except psframe.OptimizerError as exc:
        print(f"{what}-ERROR rank {kv.rank}: {exc}", flush=True)
    else:
        raise SystemExit(f"{what}: set_optimizer did not fail on rank {kv.rank}")


def main(mode, out):
    with psframe.create("dist_sync") as kv:
        w = [initial(0, k, shape) for k, shape in enumerate(SHAPES)]
        for k, x in enumerate(w):
            kv.init(f"k{k}", x)
        if mode == "bad-first":
            expect_error(kv, lambda: WorkersOnly(lr=1.0), "UNREGISTERED")
            try:
                kv.set_optimizer(SignMomentum(beta=object()))
            except psframe.OptimizerError as exc:
                print(f"NONMSGPACK-ERROR rank {kv.rank}: {exc}", flush=True)
            expect_error(kv, lambda: ServerPicky(lr=1.0), "REJECTED")
            kv.barrier()
        kv.set_optimizer(SignMomentum(lr=0.01, beta=0.5, rescale_grad=0.5))
        for step in range(STEPS):
            for k, x in enumerate(w):
                kv.push(f"k{k}", gradient(0, k, step, kv.rank, SHAPES[k]))
            for k, x in enumerate(w):
                kv.pull(f"k{k}", out=x)
        kv.barrier()
    np.savez(f"{out}{kv.rank}.npz", **{f"k{k}": x for k, x in enumerate(w)})

if __name__ == "__main__":
    main(*sys.argv[1:])
'''


def check_custom_weights(tmp_path, prefix):
    for k, shape in enumerate(SHAPES):
        w, m = initial(0, k, shape), np.zeros(shape)
        for step in range(STEPS):
            m = 0.5 * m + 0.5 * summed(0, k, step, shape)
            w = w - 0.01 * np.sign(m)
        for r in range(N):
            got = np.load(tmp_path / f"{prefix}{r}.npz", allow_pickle=False)[f"k{k}"]
            np.testing.assert_allclose(got, w, rtol=0, atol=1e-12)


def test_custom_optimizer_in_the_script_trains_through_the_launcher(tmp_path):
    script = f"SHAPES = {SHAPES!r}\nSTEPS = {STEPS}\n" + CUSTOM_SCRIPT
    out = launch(tmp_path, script, "good", tmp_path / "custom",
                 extra=["--optimizer-module", str(tmp_path / "job.py")])
    assert "optimizer set: signmomentum" in out
    check_custom_weights(tmp_path, "custom")


def test_bad_optimizers_are_clear_errors_and_servers_go_on_serving(tmp_path):
    script = f"SHAPES = {SHAPES!r}\nSTEPS = {STEPS}\n" + CUSTOM_SCRIPT
    out = launch(tmp_path, script, "bad-first", tmp_path / "custom",
                 extra=["--optimizer-module", str(tmp_path / "job.py")])
    # unregistered on the servers: an error reply naming the name and the fix, no import
    assert out.count("UNREGISTERED-ERROR") == N, out[-4000:]   # every worker raises alike
    line = next(l for l in out.splitlines() if "UNREGISTERED-ERROR rank 0" in l)
    assert "workersonly" in line and "register" in line and "--optimizer-module" in line
    # a config msgpack cannot carry is refused on the worker, naming the field
    assert out.count("NONMSGPACK-ERROR") == N
    assert "SignMomentum.beta" in out
    # a config the server's class rejects: an error reply, and the servers go on
    assert out.count("REJECTED-ERROR") == N and "refuses to run on a server" in out
    # ... and training with the registered custom optimizer then works on every worker
    check_custom_weights(tmp_path, "custom")


SERIAL_SCRIPT = '''
import sys
import numpy as np
import psframe, psframe.optim as optim

B, DIM, STEPS_ = 8, 1200, 20   # DIM > PSFRAME_BIGARRAY_BOUND: the weight key is sliced

def main(global_batch_workers, out):
    kv = psframe.create("dist_sync")
    nb = B * global_batch_workers                     # the global batch N*b
    per = nb // kv.num_workers                        # this worker's share
    data = np.random.default_rng(7)
    X = data.standard_normal((STEPS_, nb, DIM)) / np.sqrt(DIM)
    true_w = data.standard_normal(DIM)
    Y = X @ true_w + 0.3 + 0.01 * data.standard_normal((STEPS_, nb))
    kv.set_optimizer(optim.SGD(lr=0.5, momentum=0.9, weight_decay=1e-3, rescale_grad=1.0 / nb))
    w, b = np.zeros(DIM), np.zeros(1)
    kv.init("w", w)
    kv.init("b", b)
    lo = kv.rank * per
    for step in range(STEPS_):
        x, y = X[step, lo:lo + per], Y[step, lo:lo + per]
        r = x @ w + b[0] - y                          # squared loss, gradient summed over rows
        kv.push("w", x.T @ r)
        kv.push("b", np.array([r.sum()]))
        kv.pull("w", out=w)
        kv.pull("b", out=b)
    if kv.rank == 0:
        np.savez(out, w=w, b=b)
    kv.close()

if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
'''


def test_serial_equivalence_one_worker_big_batch_vs_two_workers(tmp_path):
    launch(tmp_path, SERIAL_SCRIPT, N, tmp_path / "serial.npz", n=1)
    launch(tmp_path, SERIAL_SCRIPT, N, tmp_path / "parallel.npz", n=N)
    one = np.load(tmp_path / "serial.npz", allow_pickle=False)
    many = np.load(tmp_path / "parallel.npz", allow_pickle=False)
    assert np.abs(one["w"]).max() > 0.1                # it trained
    for name in ("w", "b"):
        np.testing.assert_allclose(many[name], one[name], rtol=1e-6, atol=1e-12)


def test_custom_optimizer_example_runs_under_the_launcher(tmp_path):
    example = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "custom_optimizer.py")
    example = os.path.abspath(example)
    cmd = [LAUNCH, "-n", str(N), "-s", str(S), "--optimizer-module", example, example]
    out = run_launcher(cmd, tmp_path, 60)
    line = next(l for l in out.splitlines() if "max |w - w*|" in l)
    assert float(line.split("=")[1].split()[0]) < 0.01, line
