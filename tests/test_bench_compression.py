"""``psframe-bench --compression``: the comparison job runs end to end and its byte figures
come from the servers' counters (exact: 2-bit words and float16 halves of float32's bytes)."""
import json

import pytest

from psframe.bench import compression
from test_bench_smoke import _run_bench


def test_bench_compression_reports_bytes_from_server_counters(tmp_path):
    out_json = tmp_path / "b.json"
    proc = _run_bench([
        "--sizes", "", "--allreduce-sizes", "", "--keys", "0", "--model", "none", "--no-gloo",
        "--rounds", "2", "--warmup", "1", "--compression", "2bit,fp16", "--compression-sizes", "64KiB,4100",
        "--json", str(out_json)])
    assert "gradient compression" in proc.stdout
    rows = {(r["nbytes"], r["compression"]): r for r in json.loads(out_json.read_text())["compression"]}
    assert set(rows) == {(n, t) for n in (65536, 4100) for t in ("none", "2bit", "fp16")}
    assert rows[65536, "none"]["bytes_per_pushpull"] == 65536
    assert rows[65536, "2bit"]["bytes_per_pushpull"] == 65536 / 16
    assert rows[65536, "fp16"]["bytes_per_pushpull"] == 65536 / 2
    # 1025 float32 elements: 65 words of 2-bit codes (the last one padded)
    assert rows[4100, "2bit"]["bytes_per_pushpull"] == 65 * 4
    assert all(r["pushpull_s"] > 0 and r["cpu_s_per_pushpull"] > 0 for r in rows.values())


def test_compression_types_are_checked():
    assert compression.parse_types("2bit, fp16") == ["2bit", "fp16"]
    assert compression.parse_types("") == []
    with pytest.raises(ValueError, match="topk is not one of"):
        compression.parse_types("2bit,topk")
