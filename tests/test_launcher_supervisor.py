"""The supervisor's decisions against a scripted fake backend (no process, no socket): who is
the root cause, the exit code, the shutdown grace, a signal to the launcher, the report."""
import io
import signal
import threading
import time

from psframe_launcher.backends.base import Backend, ExitStatus, ProcessHandle
from psframe_launcher.config import LaunchConfig
from psframe_launcher.hosts import Host
from psframe_launcher.plan import make_plan
from psframe_launcher.supervisor import Job

# plan order: 0 scheduler, 1 server 0, 2..4 workers 0..2


class ScriptedBackend(Backend):
    """Posts ``(post_after_s, spec_index, ExitStatus, ended_at_offset_s)`` as if processes ended;
    ``stop`` first lets every scripted exit through (like joining waiters), then ends the rest
    with SIGTERM."""

    def __init__(self, config, script):
        super().__init__(config)
        self.script = script
        self.timers = []
        self.stopped = None

    def hosts(self):
        return [Host("h", 3)]

    def start(self, plan, events, sinks):
        handles = [ProcessHandle(s, events, sink) for s, sink in zip(plan.specs, sinks)]
        t0 = time.monotonic()
        for n, h in enumerate(handles):
            h.pid = 1000 + n
            h.sink.write(f"hello from {h.spec.label}")
        for after, index, status, ended in self.script:
            timer = threading.Timer(after, handles[index].post_exit, (status, t0 + ended))
            timer.start()
            self.timers.append(timer)
        return handles

    def stop(self, handles, grace):
        for t in self.timers:
            t.join(timeout=5)
        self.stopped = [h.spec.label for h in handles if h.status is None]
        for h in handles:
            h.post_exit(ExitStatus(signal=signal.SIGTERM))


def _job(script, **kw):
    config = LaunchConfig(num_workers=3, num_servers=1, script="train.py", cwd="/", **kw)
    plan = make_plan(config, [Host("h", 3)], 9000)
    out, err = io.StringIO(), io.StringIO()
    return Job(plan, ScriptedBackend(config, script), config, out, err), out, err


def test_root_cause_is_the_first_to_end_not_the_first_reported():
    # server 0 ended first (t=0.01) but its exit is reported late (output still draining);
    # worker 2's exit 7 (t=0.05) is reported first and triggers the stop
    job, out, err = _job([(0.05, 4, ExitStatus(code=7), 0.05), (0.3, 1, ExitStatus(code=3), 0.01)])
    result = job.run()
    job.report(result)
    assert result.exit_code == 3
    assert [h.spec.label for h in result.failures] == ["server 0@h", "worker 2@h"]
    report = err.getvalue()
    assert "ROOT CAUSE: server 0@h (role server, rank 0, host h, pid 1001) exited with code 3" in report
    assert "also failed: worker 2@h (role worker, rank 2, host h, pid 1004) exited with code 7" in report
    assert "| hello from server 0@h" in report and "last 1 lines of scheduler@h" in report
    assert "stopped by the launcher: scheduler@h, worker 0@h, worker 1@h" in report
    assert job.backend.stopped == ["scheduler@h", "worker 0@h", "worker 1@h"]
    assert "[worker 1@h] hello from worker 1@h" in out.getvalue()


def test_signal_exit_code_is_128_plus_n():
    job, _, err = _job([(0.05, 3, ExitStatus(signal=9), 0.05)])
    result = job.run()
    job.report(result)
    assert result.exit_code == 137
    assert "ROOT CAUSE: worker 1@h" in err.getvalue() and "killed by SIGKILL (signal 9)" in err.getvalue()


def test_success_after_shutdown_grace_when_servers_linger():
    ok = ExitStatus(code=0)
    job, _, err = _job([(0.02, 2, ok, 0.02), (0.03, 3, ok, 0.03), (0.04, 4, ok, 0.04)],
                       shutdown_grace=0.3)
    started = time.monotonic()
    result = job.run()
    job.report(result)
    took = time.monotonic() - started
    assert result.exit_code == 0 and result.failures == [] and err.getvalue() == ""
    assert 0.3 <= took < 2.0
    assert job.backend.stopped == ["scheduler@h", "server 0@h"]


def test_clean_end_without_waiting_for_the_grace():
    ok = ExitStatus(code=0)
    job, _, _ = _job([(0.02, i, ok, 0.02) for i in range(5)], shutdown_grace=30)
    started = time.monotonic()
    assert job.run().exit_code == 0
    assert time.monotonic() - started < 2.0


def test_launcher_signal_stops_the_job():
    job, _, err = _job([])
    threading.Timer(0.1, job.request_stop, (signal.SIGTERM,)).start()
    result = job.run()
    job.report(result)
    assert result.exit_code == 143 and result.stopped_by == "signal SIGTERM"
    assert "stopped by signal SIGTERM" in err.getvalue()
    assert len(job.backend.stopped) == 5


def _launch_runs(monkeypatch, runs, max_restarts):
    """``launch`` with a scripted backend per run; returns (exit code, stderr, plans run)."""
    from psframe_launcher import supervisor
    config = LaunchConfig(num_workers=3, num_servers=1, script="train.py", cwd="/",
                          max_restarts=max_restarts, shutdown_grace=0.2)
    scripts, plans = iter(runs), []

    class Recording(ScriptedBackend):
        def start(self, plan, events, sinks):
            plans.append(plan)
            return super().start(plan, events, sinks)

    monkeypatch.setattr(supervisor, "get_backend", lambda name, cfg: Recording(cfg, next(scripts)))
    out, err = io.StringIO(), io.StringIO()
    code = supervisor.launch(config, out, err)
    return code, err.getvalue(), plans


FAIL = [(0.05, 4, ExitStatus(code=7), 0.05)]                      # worker 2 exits 7
SUCCEED = [(0.02, i, ExitStatus(code=0), 0.02) for i in range(5)]


def test_max_restarts_restarts_a_failed_job_with_psframe_restart_set(monkeypatch):
    code, err, plans = _launch_runs(monkeypatch, [FAIL, FAIL, SUCCEED], max_restarts=2)
    assert code == 0
    assert [p.specs[0].env.get("PSFRAME_RESTART") for p in plans] == [None, "1", "2"]
    assert all(s.env.get("PSFRAME_RESTART") == "2" for s in plans[2].specs)
    assert err.count("ROOT CAUSE: worker 2@h") == 2
    assert "restart 1 of 2: starting the whole job again with PSFRAME_RESTART=1" in err
    assert "restart 2 of 2: starting the whole job again with PSFRAME_RESTART=2" in err
    assert ("job succeeded after 2 restart(s); earlier runs failed: worker 2@h exited with code 7; "
            "worker 2@h exited with code 7") in err


def test_max_restarts_gives_up_and_names_every_failure(monkeypatch):
    code, err, plans = _launch_runs(monkeypatch, [FAIL, FAIL], max_restarts=1)
    assert code == 7 and len(plans) == 2
    assert "restart 1 of 1" in err
    assert "run 1 (before restart 1) failed: worker 2@h exited with code 7" in err
    assert "job failed, exit code 7 after 1 restart(s)" in err


def test_without_max_restarts_a_failure_ends_the_launch(monkeypatch):
    code, err, plans = _launch_runs(monkeypatch, [FAIL], max_restarts=0)
    assert code == 7 and len(plans) == 1 and "restart" not in err
