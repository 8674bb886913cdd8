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


def test_link_rates_in_tc_spelling():
    from psframe.bench.netns import parse_rate
    assert parse_rate("1gbit") == 1e9 and parse_rate("10gbit") == 1e10
    assert parse_rate("500mbit") == 5e8 and parse_rate("2.5Gbit") == 2.5e9
    for bad in ("1gbps", "fast", "0gbit", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_multihost_floors_of_the_issue_setup():
    """2 hosts, 4 workers (2 per host), 2 servers (one per host), a 100 MiB key sliced in half:
    a flat PS moves 210 MB per direction per round, a ring 157 MB, a host tier 105 MB."""
    from psframe.bench import multihost
    m = 100 * 2 ** 20
    workers, servers = multihost.worker_hosts(4, 2), multihost.server_hosts(2, 2)
    assert workers == [0, 0, 1, 1] and servers == [0, 1]
    fl = multihost.floors(m, [0.5, 0.5], workers, servers)
    assert fl == {"flat PS": 2 * m, "ring": 1.5 * m, "host tier": m}
    assert [round(b / 1e6) for b in fl.values()] == [210, 157, 105]


def test_multihost_floors_with_three_hosts_and_a_key_on_one_server():
    from psframe.bench import multihost
    m = 3000
    workers, servers = multihost.worker_hosts(6, 3), multihost.server_hosts(3, 3)
    assert workers == [0, 0, 1, 1, 2, 2] and servers == [0, 1, 2]
    # key whole on server 0 (host 0): its host answers 4 remote workers and takes their pushes
    fl = multihost.floors(m, [1.0, 0.0, 0.0], workers, servers)
    assert fl == {"flat PS": 4 * m, "ring": 2 * 5 / 6 * m, "host tier": 2 * m}
    # sliced in thirds: each host's 2 workers send 2/3 out, its servers answer 4 workers 1/3
    fl = multihost.floors(m, [1 / 3] * 3, workers, servers)
    assert fl["flat PS"] == pytest.approx(2 * 2 / 3 * m + 4 / 3 * m)
    assert fl["host tier"] == pytest.approx(2 / 3 * m + 2 / 3 * m)


def test_multihost_crossing_counts_only_bytes_between_hosts():
    from psframe.bench import multihost
    zero = {"bytes_in_by_rank": [0] * 4, "bytes_out_by_rank": [0] * 4}
    after = [{"bytes_in_by_rank": [1, 2, 4, 8], "bytes_out_by_rank": [10, 20, 40, 80]},     # host 0
             {"bytes_in_by_rank": [100, 200, 400, 800], "bytes_out_by_rank": [1000, 2000, 4000, 8000]}]
    # host 0 (ranks 0, 1): out = its pushes to server 1 + server 0's answers to ranks 2, 3
    assert multihost.crossing([zero, zero], after, [0, 0, 1, 1], [0, 1]) == (300 + 120, 3000 + 12)
    assert multihost.crossing([zero, zero], after, [0, 0, 1, 1], [0, 1], host=1) == (3000 + 12, 300 + 120)


def test_help_shows_every_default():
    from psframe.bench.cli import build_parser
    text = " ".join(build_parser().format_help().split())
    assert "compare them with baselines measured in the same run (raw pyzmq round trip," in text
    assert "the default cases take about 2-3 minutes" in text
    for default in ("(default: 4KiB,64KiB,1MiB,16MiB,100MiB)", "(default: 16MiB,100MiB)",
                    "(default: 1000)", "(default: 10)", "(default: resnet50)", "(default: ipc)"):
        assert default in text, (default, text)


def test_an_estimate_comes_first_for_the_default_cases(monkeypatch, capsys):
    """The default run takes minutes: it says how long before measuring (stopped here at once)."""
    from psframe.bench import cli

    def measure(ns):
        raise RuntimeError("stopped by the test")
    monkeypatch.setattr(cli, "measure", measure)
    assert cli.main([]) == 1
    assert "about 2-3 minutes" in capsys.readouterr().err
    assert cli.main(["--sizes", "4KiB"]) == 1           # a custom set: no promise about its time
    assert "minutes" not in capsys.readouterr().err


def test_make_bench_writes_the_plot():
    """``make bench`` passes --plot (and --json), so it leaves the plot the docs show."""
    import pathlib
    import re
    makefile = (pathlib.Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert re.search(r"psframe-bench .*--plot \S+\.png", recipe), recipe


def test_sparse_table_sizes_parse_and_bad_ones_are_named():
    from psframe.bench.cli import parse_table
    assert parse_table("4000000x64") == (4000000, 64)
    for bad in ("4000000", "0x64", "ax3"):
        with pytest.raises(ValueError, match="sparse-table"):
            parse_table(bad)


def test_security_comparison_rotates_modes_and_takes_the_faster_pass():
    from types import SimpleNamespace

    from psframe.bench import security
    order, calls = [], {"none": 0, "token": 0}

    def run_job(spec, mode):
        order.append(mode)
        calls[mode] += 1
        # the second job of a pass is slower, whichever mode it is
        seconds = 0.2 if len(order) % 2 == 0 else 0.1
        return [{"rank": 0, "cases": [{"label": c["label"], "times": {"pushpull": [seconds]}}
                                      for c in spec["cases"]]}]
    figures = security.measure(run_job, ["none", "token"], SimpleNamespace(rounds=1, warmup=0), repeats=2)
    assert order == ["none", "token", "token", "none"]
    assert figures == {m: {n: 0.1 for n in security.SIZES} for m in ("none", "token")}
    text = security.table(figures)
    assert "token/none" in text and "1.000x" in text


def test_tier_targets_compare_with_gloo_only_at_the_same_rank_count():
    from psframe.bench import cli
    mib = 1 << 20
    rows = [{"job": f"2x2 {m}", "case": f"size-{100 * mib}", "nbytes": 100 * mib, "kind": "dist_sync",
             "ms": {"pushpull": ms}} for m, ms in (("tier", 0.12), ("flat", 0.3))]
    rep = {"rows": rows, "baselines": {"gloo": {100 * mib: 0.1}},
           "config": {"tier_workers": 2, "num_workers": 2}}
    got = {t["name"]: round(t["ratio"], 3) for t in cli.tier_targets(rep, "dist_sync")}
    assert got == {f"2x2 pushpull size-{100 * mib}: host tier / flat": 0.4,
                   "2x2 tier pushpull 100 MiB / gloo allreduce": 1.2}
    rep["config"]["tier_workers"] = 4           # gloo ran with 2 ranks: no comparison
    assert len(cli.tier_targets(rep, "dist_sync")) == 1
