"""psframe-bench --hosts-netns end to end with a tiny key: it builds two namespace hosts with sshd
and shaped links, runs the psframe job over the ssh launcher and the gloo allreduce across them,
prints both next to the floors, and leaves no namespace and no process behind, also when stopped
by SIGTERM. No timing assertions (speed is the bench's output, not a test's)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import require
from psframe.bench import baselines, cli, netns

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def _start(*args):
    """The bench in the background, once its hosts are up: ``(proc, names, inodes)`` with the
    namespaces' names (bridge included) and their inodes (what ``/proc/PID/ns/net`` names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSFRAME_")}
    proc = subprocess.Popen([sys.executable, "-m", "psframe.bench", "--hosts-netns", "2",
                             "--link-rate", "1gbit", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    for line in proc.stderr:
        found = re.search(r"hosts up: (\S+), (\S+) ", line)
        if found:
            hosts = [found.group(1), found.group(2)]
            names = hosts + [hosts[0].rsplit("-h", 1)[0] + "-br"]
            return proc, names, {os.stat(f"/run/netns/{n}").st_ino for n in names}
    proc.wait(timeout=60)
    raise AssertionError(f"the bench never built its hosts (exit {proc.returncode}): {proc.stdout.read()}")


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _in_namespaces(inodes):
    """Pids of processes in one of the network namespaces ``inodes`` (deleted or not)."""
    want = {f"net:[{i}]" for i in inodes}
    pids = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and os.readlink(f"/proc/{d}/ns/net") in want:
                pids.append(int(d))
        except OSError:
            pass
    return pids


def _assert_nothing_left(names, inodes):
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    assert not [n for n in names if n in listed], listed
    assert not _in_namespaces(inodes)


@pytest.fixture
def can_build_hosts():
    missing = netns.missing_requirements()
    require(not missing, "; ".join(missing))
    require(baselines.torch_available(), "torch (pip install -e '.[test]')")


def test_bench_across_two_shaped_hosts_prints_both_the_floors_and_cleans_up(can_build_hosts, tmp_path):
    out_json = tmp_path / "multihost.json"
    proc, names, inodes = _start("--allreduce-sizes", "1MiB", "--rounds", "2", "--warmup", "1",
                                 "--json", str(out_json))
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        _stop(proc)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert f"2 namespace hosts ({names[0]}, {names[1]})" in out, out
    for pattern in (r"^  psframe, host tier +\d+\.\d +\d", r"^  psframe, flat +\d+\.\d +\d",
                    r"^  gloo allreduce +\d+\.\d +\d",
                    # 2 workers per host: psframe goes through the host tier, one push and one
                    # pull of the other host's half per host and round
                    r"^  psframe payload between hosts \(server_stats\): 1\.0 out / 1\.0 in",
                    r"^  floor flat PS +2\.1 MB +16\.8 ms +psframe flat at",
                    r"^  floor ring +1\.6 MB +12\.6 ms +gloo at",
                    r"^  floor host tier +1\.0 MB +8\.4 ms +psframe at",
                    r"^multi-host 1 MiB pushpull, 2 hosts at 1 Gbit/s: host tier / flat \d+\.\d\dx, "
                    r"psframe/gloo \d+\.\d\dx"):
        assert re.search(pattern, out, re.M), (pattern, out)
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    (row,) = json.loads(out_json.read_text())["rows"]
    # a 1 MiB key lives whole on server 0 (host 1): its link carries 2 workers' pulls out and
    # their pushes in; a 4-rank ring sends 2*3/4 of the key over the one edge leaving a host;
    # one sum per host: one push in and one pull out
    assert row["floors"] == {"flat PS": 2 * MIB, "ring": 1.5 * MIB, "host tier": MIB}
    # psframe runs the host tier (2 workers per host): one host sum each way, exact in server_stats
    assert row["psframe_payload"] == [MIB, MIB]
    # and flat (--no-host-tier, the same job again): each worker of the other host pushes and pulls
    assert row["flat_payload"] == [2 * MIB, 2 * MIB] and row["flat"] > 0
    assert min(row["psframe_wire"]) >= MIB                         # the wire adds headers
    assert min(row["gloo_wire"]) >= 1.5 * MIB
    _assert_nothing_left(names, inodes)


def _job_running(inodes):
    for pid in _in_namespaces(inodes):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"psframe/bench/job.py" in f.read():
                    return True
        except OSError:
            pass
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_the_bench_and_removes_everything(can_build_hosts, sig):
    proc, names, inodes = _start("--allreduce-sizes", "64MiB", "--rounds", "30", "--no-gloo")
    try:
        deadline = time.monotonic() + 60
        while not _job_running(inodes) and time.monotonic() < deadline:
            time.sleep(0.2)            # until the workers run inside the namespaces
        assert _job_running(inodes), "the job never started"
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name}" in err and "Traceback" not in err, err
    _assert_nothing_left(names, inodes)


def test_multihost_mode_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert cli.main(["--hosts-netns", "2"]) == 2
    err = capsys.readouterr().err
    assert "needs root" in err and "run as root" in err, err


def test_multihost_mode_rejects_a_bad_rate(capsys):
    assert cli.main(["--hosts-netns", "2", "--link-rate", "1gbps"]) == 2
    assert "link rate '1gbps'" in capsys.readouterr().err
