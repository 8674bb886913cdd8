"""Bounded resources of a running job: a peer that never reads its replies is cut off within
the send timeout while two honest workers keep training; a 1 GiB message is refused by the
socket before the server buffers it; an init over the server's memory budget is a clear error
naming the budget."""
import json
import re
import time

import pytest

from launcher_fixtures import Launch, assert_none_left, new_tag
from psframe.transport import credentials
from rogue_client import huge_message, slow_reader
from test_security_rogue import WORKER, stats_of, wait_for

pytestmark = pytest.mark.integration

SIZE = 1 << 20            # 4 MiB key: replies that fill a queue fast
SEND_TIMEOUT = 3.0
BUDGET = 64 << 20


def test_slow_reader_is_cut_off_big_message_refused_budget_enforced(tmp_path):
    job = Launch(["-n", "2", "-s", "1", "--security", "token",
                  "--env", f"PSFRAME_SEND_TIMEOUT={SEND_TIMEOUT}",
                  "--env", f"PSFRAME_SERVER_MEMORY_BYTES={BUDGET}",
                  WORKER, str(tmp_path), "60", str(SIZE), "0.1", str(80 << 20)],
                 new_tag(), timeout=150)
    ctx = None
    try:
        wait_for(tmp_path / "stolen", job)
        wait_for(tmp_path / "info.json", job)
        info = json.loads((tmp_path / "info.json").read_text())
        stolen = credentials.read_file(str(tmp_path / "stolen"))
        # a 1 GiB (+1 byte) frame: over PSFRAME_MAX_MESSAGE_BYTES (1 GiB), dropped by zmq as
        # soon as its size is read
        assert huge_message(info, stolen, (1 << 30) + 1) is None
        ctx, _ = slow_reader(info, stolen, 1100)
        started = time.monotonic()
        (tmp_path / "go").write_text("")
        line = job.wait_for_line(r"\[server 0@[^]]+\] .*cut off worker:1 \(connection", 30)
        cut_after = time.monotonic() - started
        assert "PSFRAME_SEND_TIMEOUT=3" in line or "replies waited" in line, line
        assert cut_after < SEND_TIMEOUT + 10, cut_after
        rc, _ = job.wait(120)
        assert rc == 0, job.text()
        for rank in range(2):
            assert any(f"EXACT rank={rank}" in l for l in job.lines), job.text()
        # the honest workers trained on while the reader's replies were held and after the cut
        steps_after = [l for l in job.lines if re.search(r"STEP \d+ rank=0", l)
                       and float(l.rsplit("at=", 1)[1]) > time.time() - (time.monotonic() - started) + cut_after]
        assert steps_after, job.text()
        over = [l for l in job.lines if "OVER BUDGET" in l]
        assert len(over) == 2, job.text()
        for l in over:
            assert "MemoryBudgetError" in l and f"budget of {BUDGET} bytes" in l, l
            assert "PSFRAME_SERVER_MEMORY_BYTES" in l, l
        stats = stats_of(job)[0]
        assert stats["cut_off_peers"] == 1, stats
        assert stats["peak_rss_bytes"] < 900 << 20, stats      # the 1 GiB never got in
        assert_none_left(job.tag)
    finally:
        if ctx is not None:
            ctx.destroy(0)
        job.stop()
