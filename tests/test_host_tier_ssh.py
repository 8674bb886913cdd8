"""The host tier across machines: 2 network-namespace hosts (sshd each, ``psframe.bench.netns``)
x 3 workers, 2 servers, launched over ssh, through the tier and flat (--no-host-tier)."""

import pytest

from conftest import require
from launcher_fixtures import Launch, assert_none_left, new_tag, worker_results
from psframe.bench import netns
from test_host_tier import JOB

pytestmark = pytest.mark.integration

SUBNET = "10.201.0"
ADDRS = [f"{SUBNET}.11", f"{SUBNET}.12"]


def _run(hosts, *flags):
    job = Launch(["-H", hosts.hostfile, *hosts.launch_args, "-n", "6", "-s", "2",
                  "--env", "PSFRAME_BIGARRAY_BOUND=1000", "--env", "PSFRAME_HEARTBEAT_TIMEOUT=20",
                  *(flags or ("--host-tier",)), JOB], new_tag(), timeout=180,
                 prefix=hosts.exec_prefix(0))
    try:
        rc, _ = job.wait(180)
        assert rc == 0, job.text()
        results = worker_results(job)
        assert_none_left(job.tag)
        return results
    finally:
        job.stop()


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    missing = netns.missing_requirements()
    require(not missing, "; ".join(missing))
    with netns.NetnsHosts(2, slots=3, workdir=tmp_path_factory.mktemp("tier"), lifetime=300,
                          subnet=SUBNET, prefix="pt") as hosts:
        assert hosts.addresses == ADDRS
        return _run(hosts), _run(hosts, "--no-host-tier")


def test_two_hosts_tiered_equal_flat_bit_for_bit(two_hosts):
    tiered, flat = two_hosts
    assert sorted(tiered) == sorted(flat) == list(range(6))
    for r in range(6):
        assert tiered[r]["hosts"] == [3, 3] and tiered[r]["host"] == ADDRS[r // 3]
        assert tiered[r]["exact"] and flat[r]["exact"]    # (g0+g1+g2)+(g3+g4+g5), plain numpy
        assert tiered[r]["digest"] == flat[r]["digest"] == tiered[0]["digest"]


def test_each_server_gets_one_push_per_host_per_key_part_step(two_hosts):
    tiered, flat = two_hosts
    for stats, per_host in ((tiered[0]["stats"], 1), (flat[0]["stats"], 3)):
        assert len(stats) == 2
        for server in stats:
            assert server["key_steps"]
            for steps in server["key_steps"].values():
                for by_host in steps.values():
                    assert by_host == {ADDRS[0]: per_host, ADDRS[1]: per_host}


def test_host_to_server_bytes_fall_3x(two_hosts):
    tiered, flat = two_hosts
    sent = [{h: sum(s["hosts"][h]["bytes"] for s in run[0]["stats"]) for h in ADDRS[:2]}
            for run in (tiered, flat)]
    # the second host sends only pushes (rank 0 on the first also sends the initial values)
    assert sent[1][ADDRS[1]] == 3 * sent[0][ADDRS[1]], sent
    assert 2.5 < sent[1][ADDRS[0]] / sent[0][ADDRS[0]] < 3, sent
