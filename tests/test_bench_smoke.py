"""psframe-bench end to end with tiny sizes: it runs real jobs through psframe-launch and writes
a JSON report, a PNG plot and a Chrome timeline. No timing assertions (speed is the bench's
output, not a test's)."""
import json
import os
import shutil
import subprocess
import sys

from conftest import optional_import, require

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _bench_command():
    exe = shutil.which("psframe-bench", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "psframe.bench"]


def _run_bench(args):
    """Run psframe-bench with ``args`` (no PSFRAME_* from this environment); it must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSFRAME_")}
    proc = subprocess.run(_bench_command() + args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bench_runs_and_writes_json_plot_and_timeline(tmp_path):
    require(optional_import("matplotlib") is not None, "matplotlib (pip install -e '.[test]')")
    out_json, out_png, trace = tmp_path / "b.json", tmp_path / "b.png", tmp_path / "trace.json"
    proc = _run_bench([
        "--sizes", "4KiB,64KiB", "--allreduce-sizes", "64KiB", "--keys", "8", "--key-size", "1KiB",
        "--model-scale", "0.005", "--rounds", "2", "--warmup", "1", "--no-gloo", "--tier-workers", "3",
        "--json", str(out_json), "--plot", str(out_png), "--timeline", str(trace)])
    assert "pushpull ms" in proc.stdout and "targets" in proc.stdout
    rep = json.loads(out_json.read_text())
    cases = {(r["job"], r["case"]) for r in rep["rows"]}
    assert ("1x2", "size-4096") in cases and ("2x2", "size-65536") in cases
    assert ("1x2", "keys-8x1024") in cases and ("1x2", "model-resnet50") in cases
    for mode in ("tier", "flat"):      # the host-tier job, through the tier and without it
        assert {(f"2x3 {mode}", "size-65536"), (f"2x3 {mode}", "model-resnet50")} <= cases
    assert sum("host tier / flat" in t["name"] for t in rep["targets"]) == 2
    assert rep["host_bytes"]["2x3 flat"] > rep["host_bytes"]["2x3 tier"] > 0
    assert all(v > 0 for r in rep["rows"] for v in r["ms"].values())
    assert set(rep["baselines"]) >= {"zmq", "numpy_copy", "raw_traffic", "raw_traffic_1server"}
    assert all(r["raw_traffic"] > 0 for r in rep["rows"] if r["case"].startswith("size-"))
    assert rep["memory"]["held"] > 0 and rep["memory"]["peak_rss"] > 0
    assert set(rep["server_updates"].values()) == {0}         # no --optimizer: servers only sum
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    merged = tmp_path / "trace.1x2.dist_sync.json"
    events = json.loads(merged.read_text())["traceEvents"]
    cats = {e.get("cat") for e in events}
    assert {"push", "pull", "pushpull", "merge"} <= cats
    assert {e["pid"] for e in events if e.get("cat") == "merge"} == {1000}    # server 0


def test_bench_with_an_optimizer_has_the_servers_update(tmp_path):
    out_json = tmp_path / "b.json"
    proc = _run_bench([
        "--sizes", "4KiB", "--allreduce-sizes", "", "--keys", "4", "--key-size", "1KiB", "--model", "none",
        "--rounds", "2", "--warmup", "1", "--no-gloo", "--tier-workers", "0", "--optimizer", "sgd",
        "--json", str(out_json)])
    assert "servers apply sgd" in proc.stdout
    rep = json.loads(out_json.read_text())
    assert rep["config"]["optimizer"] == "sgd"
    # 1 warm-up + 40 timed rounds (small payloads get 20x --rounds); each updates every key
    # once per push or pushpull: size-4096 (push, pull, pushpull), 4 keys and one key (pushpull)
    assert rep["server_updates"]["1x2 dist_sync"] == 41 * (2 + 4 + 1)


def test_bench_rejects_a_bad_size(tmp_path):
    cmd = _bench_command() + ["--sizes", "bogus"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def test_bench_checkpoint_mode_saves_and_loads_through_a_job(tmp_path):
    out_json = tmp_path / "c.json"
    proc = _run_bench(["--mode", "checkpoint", "--model-scale", "0.01", "--rounds", "1",
                       "--checkpoint-url", str(tmp_path / "ck"), "--json", str(out_json)])
    assert "save/np" in proc.stdout and "target: save and load <= 1.5x" in proc.stdout
    row, = json.loads(out_json.read_text())["checkpoint"]
    assert row["nbytes"] > 0 and all(row[k] > 0 for k in ("save", "load", "plain_write", "plain_read"))
    assert not any((tmp_path / "ck").iterdir())          # its files are removed afterwards
