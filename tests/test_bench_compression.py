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


def test_multihost_report_puts_a_compressed_run_beside_the_uncompressed_one():
    from psframe.bench import multihost
    mib = 1 << 20
    row = {"nbytes": 100 * mib, "rounds": 5, "compression": "none", "psframe": 2.0,
           "psframe_wire": (210e6, 210e6), "psframe_payload": (209.7e6, 209.7e6),
           "floors": {"flat PS": 209.7e6, "ring": 157e6, "host tier": 104.9e6}}
    packed = dict(row, compression="2bit", psframe=1.0, psframe_wire=(118e6, 118e6))
    rep = {"hosts": 2, "namespaces": ["a-h0", "a-h1"], "rate_bits": 1e9, "num_workers": 4,
           "num_servers": 2, "worker_hosts": [0, 0, 1, 1], "server_hosts": [0, 1], "rounds": 5,
           "warmup": 1, "rows": [row, packed]}
    text = multihost.text(rep)
    lines = text.splitlines()
    at = next(i for i, l in enumerate(lines) if l.startswith("  psframe (ssh launcher)"))
    assert lines[at + 1].split() == ["psframe,", "2bit", "1000.0", "118.0", "/", "118.0", "0.94", "94%",
                                     "0.50x", "uncompressed"], lines[at + 1]
    assert ("multi-host 100 MiB pushpull, 2 hosts at 1 Gbit/s: 2bit / uncompressed 0.50x "
            "(1000 ms vs 2000 ms; host link out 118.0 MB/round)") in text
