"""examples/train_ctr.py end to end: a hashed-feature logistic regression on a sparse key, serial
and under ``psframe-launch -n 4 -s 2``, must reach the ground-truth model's test AUC within 0.01."""
import json
import os
import re
import sys

import pytest

from conftest import EXAMPLES, LAUNCH
from test_examples_mlp import run

pytestmark = pytest.mark.integration

LAST = re.compile(r"^test AUC (0\.\d{4}) \(ground-truth model (0\.\d{4})\)$")


def check(out, out_dir, launched):
    lines = [l for l in out.splitlines() if l.strip()]
    if launched:
        lines = [l.split("] ", 1)[1] for l in lines if l.startswith("[worker 0@")]
    m = LAST.match(lines[-1])
    assert m, f"last line of rank 0 is {lines[-1]!r}"
    with open(os.path.join(out_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert float(m.group(1)) == pytest.approx(metrics["test_auc"], abs=1e-4)
    assert float(m.group(2)) == pytest.approx(metrics["ground_truth_auc"], abs=1e-4)
    assert metrics["ground_truth_auc"] > 0.8       # the log carries real signal
    return metrics


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    return str(tmp_path_factory.mktemp("clicks") / "log")


def test_ctr_serial_reaches_ground_truth_auc(log, tmp_path):
    out = run([sys.executable, os.path.join(EXAMPLES, "train_ctr.py"), "--data", log,
               "--out", str(tmp_path)], cwd=str(tmp_path))
    metrics = check(out, str(tmp_path), False)
    assert metrics["kvstore"] == "local" and metrics["num_workers"] == 1
    assert abs(metrics["test_auc"] - metrics["ground_truth_auc"]) <= 0.01, metrics


def test_ctr_four_workers_two_servers_reach_ground_truth_auc(log, tmp_path):
    out = run([LAUNCH, "-n", "4", "-s", "2", os.path.join(EXAMPLES, "train_ctr.py"), "--data", log,
               "--out", str(tmp_path)], cwd=str(tmp_path))
    metrics = check(out, str(tmp_path), True)
    assert metrics["kvstore"] == "dist_sync" and metrics["num_workers"] == 4
    assert abs(metrics["test_auc"] - metrics["ground_truth_auc"]) <= 0.01, metrics
