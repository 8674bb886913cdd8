"""A rogue client (this test process) attacks a running job started by psframe-launch: without
credentials, with another job's, and with a stolen worker credential claiming to be another
worker or a server. Every command is refused, the refusals are counted, and the job's weights
come out exact."""
import json
import os
import re

import pytest

from launcher_fixtures import BIN, Launch, assert_none_left, new_tag
from psframe.protocol import Command
from psframe.transport import credentials
from rogue_client import as_itself, attack

pytestmark = pytest.mark.integration

WORKER = os.path.join(BIN, "security_worker.py")
STEPS = 6


def wait_for(path, job, timeout=60):
    import time
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert job.proc.poll() is None and time.monotonic() < deadline, job.text()
        time.sleep(0.05)


def stats_of(job):
    line = next(l for l in job.lines if "STATS " in l)
    return json.loads(line.split("STATS ", 1)[1])


def check_refused(replies, variant):
    for endpoint, got in replies.items():
        if variant == "stolen":
            # every command answered, and every answer a refusal
            assert set(got) == {c.value for c in Command}, (endpoint, got)
            assert set(got.values()) == {"RefusedError"}, (endpoint, got)
        else:
            assert got == {}, (endpoint, got)     # the connection never got in


@pytest.mark.parametrize("mode", ["token", "curve"])
def test_rogue_client_is_refused_and_the_job_stays_exact(tmp_path, mode):
    job = Launch(["-n", "2", "-s", "2", "--security", mode, WORKER, str(tmp_path), str(STEPS)],
                 new_tag(), timeout=120)
    try:
        wait_for(tmp_path / "stolen", job)
        wait_for(tmp_path / "info.json", job)
        info = json.loads((tmp_path / "info.json").read_text())
        assert all(a.startswith("ipc://") for a in info["local"] if a)
        stolen = credentials.read_file(str(tmp_path / "stolen"))
        assert stolen.identity == "worker:1" and stolen.mechanism == mode
        other = credentials.generate(mode, credentials.identities(2, 2))["worker:1"]
        check_refused(attack(info, None, "worker:1"), "none")
        check_refused(attack(info, other, "worker:1"), "other job")
        for claim in ("worker:0", "server:0", "server:1"):
            check_refused(attack(info, stolen, claim), "stolen")
        for endpoint, got in attack(info, stolen, "worker:1", lambda: as_itself(stolen)).items():
            # a server does not take registrations from anyone: for it that is a protocol error
            register = "RefusedError" if endpoint == "scheduler" else "ProtocolError"
            assert got == {"register": register, "shutdown": "RefusedError", "ok": "RefusedError",
                           "error": "RefusedError"}, (endpoint, got)
        (tmp_path / "go").write_text("")
        rc, _ = job.wait(90)
        assert rc == 0, job.text()
        for rank in range(2):
            assert any(f"EXACT rank={rank}" in l for l in job.lines), job.text()
        stats = stats_of(job)
        for s in stats:
            # the stolen credential's 3 claims x 15 commands reached each server and were refused
            assert s["refused_messages"] >= 3 * len(Command) + 3, stats
            assert s["refused_connections"] >= 2, stats      # no credentials; another job's
        text = job.text()
        assert re.search(r"\[scheduler@[^]]+\] .*refused \d+ connections and \d+ messages", text), text
        assert stolen.secret not in text and "PSFRAME_CREDENTIALS" not in text
        assert_none_left(job.tag)
    finally:
        job.stop()
