"""Pure parts of the bench and of the transfer layout it measures: sizes, model shapes, report
arithmetic and batching of a call's arrays into bounded messages."""
import pytest

from psframe.bench import cases, report
from psframe.kvstore import routes


def test_parse_and_format_sizes():
    assert cases.parse_size("4KiB") == 4096
    assert cases.parse_size("100MiB") == 100 * 2 ** 20
    assert cases.parse_size(" 512 ") == 512
    assert cases.format_size(16 * 2 ** 20) == "16 MiB"
    with pytest.raises(ValueError):
        cases.parse_size("lots")


def test_resnet50_shapes_match_torchvision_counts():
    shapes = cases.resnet50_shapes()
    assert len(shapes) == 161
    assert sum(cases.elements(s) for s in shapes) == 25_557_032
    small = cases.scaled(shapes, 0.01)
    assert len(small) == 161 and all(s[0] >= 1 for s in small)


def test_round_medians_take_the_slowest_worker_per_round():
    w0 = {"cases": [{"label": "a", "times": {"pushpull": [1.0, 5.0, 1.0]}}]}
    w1 = {"cases": [{"label": "a", "times": {"pushpull": [2.0, 1.0, 3.0]}}]}
    assert report.round_medians([w0, w1], "a") == {"pushpull": 3.0}


def test_table_and_targets_render():
    rows = [{"job": "1x2", "kind": "dist_sync", "case": "size-1048576", "nbytes": 2 ** 20,
             "ms": {"push": 0.002, "pull": 0.001, "pushpull": 0.003}, "zmq": 0.001}]
    text = report.table(rows)
    assert "size-1048576" in text and "3.00x" in text
    out = report.targets_text([{"name": "x", "ratio": 2.0, "limit": 3},
                               {"name": "y", "ratio": None, "limit": 2}])
    assert "[holds] x" in out and "[  n/a] y" in out


def test_batches_bound_message_bytes_per_server():
    b = routes.Batches()
    for i in range(10):
        b.add(i % 2, routes.MESSAGE_BYTES // 3).bufs.append(i)
    b.add(0, 5 * routes.MESSAGE_BYTES).bufs.append("huge")     # an oversized array gets its own message
    msgs = [(to, m.bufs) for to, m in b]
    assert all(len(m) <= 3 for _, m in msgs)
    assert sorted(x for _, m in msgs for x in m if x != "huge") == list(range(10))
    assert ("huge" in msgs[-1][1]) and msgs[-1][1] == ["huge"]


def test_zmq_echo_round_trips_over_every_local_transport_and_reaps_its_process():
    import numpy as np
    from psframe.bench.baselines import ZmqEcho
    payload = np.arange(3 << 20, dtype=np.uint64).view(np.uint8)[: 3 << 20]
    landing = np.zeros_like(payload)
    echo = ZmqEcho("ipc")
    try:
        times = echo.roundtrips(payload, landing, 1 << 20)
        ways = {"tcp", "ipc", "tcp echo-thread", "ipc echo-thread"}
        assert set(times) == ways | {w + "_chunked" for w in ways}
        assert all(t > 0 for t in times.values())
        assert np.array_equal(landing, payload)
        small = payload[:4096]
        assert set(echo.roundtrips(small, landing[:4096], 1 << 20)) == ways   # one frame only
    finally:
        echo.close()
    assert echo.proc.returncode == 0       # told to stop, exited, reaped
    assert not echo.thread.is_alive()


def test_bench_rejects_a_zero_size():
    from psframe.bench import cli
    assert cli.main(["--sizes", "4KiB", "--allreduce-sizes", "0"]) == 1
