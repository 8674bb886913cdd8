"""Lazy server-side optimizers on sparse keys vs torch: a job of 3 workers x 2 servers pushes 10
steps of row-sparse gradients (rows shared by all workers, rows of one worker only, duplicates,
an empty push); the table must equal torch's ``nn.Embedding(sparse=True)`` under ``SGD``,
``Adagrad`` and ``SparseAdam`` fed the summed gradients, max abs error <= 1e-6 in float32.
SGD with weight decay is compared with torch's SGD on just the rows each step touched (torch's
sparse path decays every row; psframe's is lazy)."""
import pathlib

import numpy as np
import pytest

import psframe
import psframe.optim as optim
from cluster import run_job
from conftest import optional_import, requires

torch = optional_import("torch")
needs_torch = pytest.fixture(autouse=True)(requires(torch, "the torch package"))
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")

R, D, WORKERS, STEPS = 40, 4, 3, 10
TOL = 1e-6
CASES = {   # key -> (psframe optimizer, its arguments)
    "sgd": ("SGD", dict(lr=0.1)),
    "sgd_wd": ("SGD", dict(lr=0.1, weight_decay=0.05)),
    "adagrad": ("Adagrad", dict(lr=0.1, lr_decay=0.01, eps=1e-7)),
    "adam": ("Adam", dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-6)),
}


def table0():
    return np.random.default_rng(99).standard_normal((R, D)).astype(np.float32)


def grad_of(step, rank):
    """Rows 0..9 shared by every worker, and a block of 10 rows per worker (0: 10..19 on server
    0; 1: 20..29 and 2: 30..39 on server 1); worker 1's push at step 4 is empty."""
    rng = np.random.default_rng([step, rank, 5])
    if (step, rank) == (4, 1):
        return np.zeros(0, np.int64), np.zeros((0, D), np.float32)
    shared = rng.integers(0, 10, 3)
    own = 10 + 10 * rank + rng.integers(0, 10, 1 + step % 3)
    ids = np.concatenate([shared, own, shared[:1]])          # a duplicate too
    return ids, rng.standard_normal((len(ids), D)).astype(np.float32)


WORKER = """
import json, sys
import numpy as np
import psframe
sys.path.insert(0, {tests!r})
from test_sparse_optim_torch import CASES, R, D, STEPS, grad_of, table0

kv = psframe.create()
out = {{}}
for key, (name, kwargs) in CASES.items():
    kv.set_optimizer(getattr(psframe.optim, name)(**kwargs))
    kv.init(key, table0(), sparse=True)
    for step in range(1, STEPS + 1):
        kv.push(key, psframe.RowSparse(*grad_of(step, kv.rank)))
    full = np.zeros((R, D), np.float32)
    kv.pull(key, out=full)
    out[key] = full.tolist()
print("RESULT " + json.dumps(out))
kv.close()
"""


def summed(step):
    ids = np.concatenate([grad_of(step, r)[0] for r in range(WORKERS)])
    rows = np.concatenate([grad_of(step, r)[1] for r in range(WORKERS)])
    return ids, rows


def torch_embedding(name, kwargs):
    emb = torch.nn.Embedding(R, D, sparse=True)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(table0()))
    if name == "SGD":
        opt = torch.optim.SGD(emb.parameters(), lr=kwargs["lr"])
    elif name == "Adagrad":
        opt = torch.optim.Adagrad(emb.parameters(), lr=kwargs["lr"], lr_decay=kwargs["lr_decay"],
                                  eps=kwargs["eps"])
    else:
        opt = torch.optim.SparseAdam(emb.parameters(), lr=kwargs["lr"],
                                     betas=(kwargs["beta1"], kwargs["beta2"]), eps=kwargs["eps"])
    for step in range(1, STEPS + 1):
        ids, rows = summed(step)
        opt.zero_grad()
        # the gradient of nn.Embedding(sparse=True) for these lookups: rows at their ids
        out = emb(torch.from_numpy(ids))
        out.backward(torch.from_numpy(rows))
        opt.step()
    return emb.weight.detach().numpy()


def torch_sgd_touched_rows(kwargs):
    table = torch.from_numpy(table0())
    for step in range(1, STEPS + 1):
        ids, rows = summed(step)
        uniq, inverse = np.unique(ids, return_inverse=True)
        grad = np.zeros((len(uniq), D), np.float32)
        np.add.at(grad, inverse.reshape(-1), rows)
        p = torch.nn.Parameter(table[uniq].clone())
        opt = torch.optim.SGD([p], lr=kwargs["lr"], weight_decay=kwargs["weight_decay"])
        p.grad = torch.from_numpy(grad)
        opt.step()
        table[uniq] = p.detach()
    return table.numpy()


@pytest.fixture(scope="module")
def job_tables(tmp_path_factory):
    script = tmp_path_factory.mktemp("sparse_optim") / "job.py"
    script.write_text(WORKER.format(tests=str(pathlib.Path(__file__).parent)))
    return run_job(str(script), num_workers=WORKERS, num_servers=2, timeout=120).check().results()


@pytest.mark.parametrize("key", list(CASES))
def test_lazy_update_matches_torch(job_tables, key):
    name, kwargs = CASES[key]
    want = torch_sgd_touched_rows(kwargs) if key == "sgd_wd" else torch_embedding(name, kwargs)
    for rank, tables in job_tables.items():
        got = np.array(tables[key], np.float32)
        err = float(np.abs(got - want).max())
        assert err <= TOL, f"{key} on worker {rank}: max abs error {err}"
    moved = np.abs(want - table0()).max(axis=1) > 0
    assert moved.sum() > 20 and not moved.all(), "the steps touch some rows, not all"
    never = ~moved
    np.testing.assert_array_equal(np.array(job_tables[0][key], np.float32)[never], table0()[never])


@pytest.mark.parametrize("key", list(CASES))
def test_local_kind_matches_torch(key):
    """One process pushing every step's gradients of all workers at once: the same updates."""
    name, kwargs = CASES[key]
    kv = psframe.create("local")
    kv.set_optimizer(getattr(optim, name)(**kwargs))
    kv.init(key, table0(), sparse=True)
    for step in range(1, STEPS + 1):
        kv.push(key, psframe.RowSparse(*summed(step)))
    got = np.zeros((R, D), np.float32)
    kv.pull(key, out=got)
    want = torch_sgd_touched_rows(kwargs) if key == "sgd_wd" else torch_embedding(name, kwargs)
    assert float(np.abs(got - want).max()) <= TOL


def test_update_rows_leaves_other_rows_and_their_state_alone():
    opt = optim.Adam(lr=0.1)
    w = table0()
    state = opt.create_state("emb", w)
    opt.update_rows("emb", w, np.array([3, 7]), np.ones((2, D), np.float32), state)
    untouched = np.setdiff1d(np.arange(R), [3, 7])
    np.testing.assert_array_equal(w[untouched], table0()[untouched])
    assert not state["exp_avg"][untouched].any() and state["exp_avg"][[3, 7]].all()
    assert int(state["t"]) == 1
