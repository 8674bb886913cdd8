"""Unit tests of the launcher's pure parts: hostfile and Slurm node lists, placement and the
child environment, flags, output framing, exit statuses. No process, no socket."""
import io
import os

import pytest

from psframe import config as envc
from psframe.errors import ConfigError
from psframe_launcher.backends.base import ExitStatus
from psframe_launcher.cli import build_parser, config_from_args
from psframe_launcher.config import LaunchConfig, parse_env_pairs, resolve_modules
from psframe_launcher.hosts import (Host, expand_nodelist, expand_tasks_per_node, parse_hostfile,
                                    slurm_hosts)
from psframe_launcher.output import LineSink, frame_event, frame_output, parse_frame
from psframe_launcher.plan import child_env, make_plan, place_workers
from psframe_launcher.supervisor import choose_backend


# --- hosts -------------------------------------------------------------------------------------
def test_hostfile_forms_and_comments():
    text = "# cluster\nhostA slots=2\n\nhostB   # one slot\n10.0.0.3 slots = 4\n"
    assert parse_hostfile(text) == [Host("hostA", 2), Host("hostB", 1), Host("10.0.0.3", 4)]


@pytest.mark.parametrize("text, words", [
    ("hostA slots=0\n", "slots='0'"),
    ("hostA slots=x\n", "slots='x'"),
    ("hostA cpus=2\n", "hostfile:1"),
    ("a\nb\na slots=2\n", "already listed on line 1"),
    ("# nothing\n\n", "no hosts"),
])
def test_hostfile_errors_name_the_line(text, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        parse_hostfile(text)


def test_unreadable_hostfile_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not readable"):
        LaunchConfig(num_workers=1, script="x.py", hostfile=str(tmp_path / "missing"))


@pytest.mark.parametrize("nodelist, expected", [
    ("localhost", ["localhost"]),
    ("psf-h[2-3]", ["psf-h2", "psf-h3"]),
    ("gpu[01,07-08],cpu1", ["gpu01", "gpu07", "gpu08", "cpu1"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("a,b[9-10]", ["a", "b9", "b10"]),
])
def test_slurm_nodelist_expansion(nodelist, expected):
    assert expand_nodelist(nodelist) == expected


@pytest.mark.parametrize("bad", ["a[1-", "a]1", "a[x-2]"])
def test_bad_slurm_nodelist(bad):
    with pytest.raises(ConfigError):
        expand_nodelist(bad)


def test_slurm_hosts_take_slots_from_tasks_per_node():
    env = {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2),1"}
    assert slurm_hosts(env) == [Host("n1", 2), Host("n2", 2), Host("n3", 1)]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(ConfigError, match="inside an allocation"):
        slurm_hosts({})


# --- plan --------------------------------------------------------------------------------------
def _config(**kw):
    kw.setdefault("num_workers", 6)
    kw.setdefault("script", "train.py")
    kw.setdefault("cwd", "/work/dir")
    kw.setdefault("python", "/venv/bin/python")
    return LaunchConfig(**kw)


HOSTS = [Host("h1", 2), Host("h2", 2), Host("h3", 2)]


def test_placement_fills_slots_in_host_order():
    assert place_workers(HOSTS, 5) == [0, 0, 1, 1, 2]
    with pytest.raises(ConfigError, match="needs 7 slots but the hosts give 6"):
        place_workers(HOSTS, 7)


def test_plan_ranks_hosts_and_env():
    plan = make_plan(_config(script_args=("--lr", "0.1")), HOSTS, 9000)
    assert plan.scheduler == "tcp://h1:9000"
    roles = [(s.role, s.index, s.host) for s in plan.specs]
    assert roles == [("scheduler", 0, "h1"),
                     ("server", 0, "h1"), ("server", 1, "h2"), ("server", 2, "h3"),
                     ("worker", 0, "h1"), ("worker", 1, "h1"), ("worker", 2, "h2"),
                     ("worker", 3, "h2"), ("worker", 4, "h3"), ("worker", 5, "h3")]
    w3 = plan.specs[7]
    assert w3.label == "worker 3@h2"
    assert w3.command == ("/venv/bin/python", "train.py", "--lr", "0.1")
    assert w3.cwd == "/work/dir"
    assert w3.env[envc.ROLE] == "worker" and w3.env[envc.RANK] == "3"
    assert w3.env[envc.LOCAL_RANK] == "1" and w3.env[envc.LOCAL_SIZE] == "2"
    assert w3.env[envc.HOST] == "h2" and w3.env[envc.SCHEDULER] == "tcp://h1:9000"
    assert w3.env[envc.NUM_WORKERS] == "6" and w3.env[envc.NUM_SERVERS] == "3"
    assert w3.env[envc.KVSTORE] == "dist_sync" and float(w3.env[envc.START_TIMEOUT]) == 60.0
    s1 = plan.specs[2]
    assert s1.command == ("/venv/bin/python", "-m", "psframe.server")
    assert s1.env[envc.SERVER_RANK] == "1" and envc.RANK not in s1.env
    assert plan.specs[0].command == ("/venv/bin/python", "-m", "psframe.scheduler")
    # every process's env parses as psframe's own config does
    for spec in plan.specs:
        cfg = envc.from_env(spec.env)
        assert cfg.role == spec.role and cfg.host == spec.host


def test_plan_is_deterministic_and_servers_default_to_hosts():
    a = make_plan(_config(), HOSTS, 9000)
    b = make_plan(_config(), HOSTS, 9000)
    assert a == b
    local = make_plan(_config(num_workers=2), [Host("127.0.0.1", 2)], 1234)
    assert len(local.by_role("server")) == 1
    more = make_plan(_config(num_servers=4), HOSTS, 9000)
    assert [s.host for s in more.by_role("server")] == ["h1", "h2", "h3", "h1"]
    assert [s.local_rank for s in more.by_role("server")] == [0, 0, 0, 1]


def test_plan_env_options_and_reserved_names():
    cfg = _config(env=(("PSF_SECRET", "x"), (envc.HEARTBEAT_TIMEOUT, "3")), kvstore="dist_async",
                  start_timeout=5, optimizer_modules=("/abs/opt.py", "mypkg.opt"))
    spec = make_plan(cfg, HOSTS, 1).specs[-1]
    assert spec.env["PSF_SECRET"] == "x" and spec.env[envc.HEARTBEAT_TIMEOUT] == "3"
    assert spec.env[envc.KVSTORE] == "dist_async" and spec.env[envc.START_TIMEOUT] == "5.0"
    assert spec.env[envc.USER_MODULES] == os.pathsep.join(["/abs/opt.py", "mypkg.opt"])
    with pytest.raises(ConfigError, match="PSFRAME_RANK is set by psframe-launch"):
        make_plan(_config(env=((envc.RANK, "0"),)), HOSTS, 1)


def test_no_host_tier_sets_hierarchical_0_for_every_process():
    assert all(envc.HIERARCHICAL not in s.env for s in make_plan(_config(), HOSTS, 1).specs)
    cfg = config_from_args(build_parser().parse_args(["-n", "2", "--no-host-tier", "x.py"]))
    assert cfg.host_tier is False
    assert all(s.env[envc.HIERARCHICAL] == "0" for s in make_plan(cfg, HOSTS, 1).specs)


def test_child_env_drops_stale_psframe_vars():
    spec = make_plan(_config(), HOSTS, 1).specs[4]
    env = child_env(spec, {"PATH": "/bin", envc.RANK: "99", "PSFRAME_OLD": "x"})
    assert env["PATH"] == "/bin" and env[envc.RANK] == "0" and "PSFRAME_OLD" not in env


# --- config and cli ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["-n", "0", "x.py"], "at least 1 worker"),
    (["-n", "2", "-s", "0", "x.py"], "at least 1 server"),
    (["-n", "2", "--kvstore", "local", "x.py"], "--kvstore 'local'"),
    (["-n", "2", "--env", "PSF_SURELY_UNSET_VAR", "x.py"], "not set in the launcher's environment"),
    (["-n", "2", "--env", "1BAD=x", "x.py"], "KEY=VALUE"),
    (["-n", "2", "--start-timeout", "0", "x.py"], "must be > 0"),
    (["-n", "2", "--optimizer-module", "nope/missing.py", "x.py"], "no such file"),
])
def test_bad_flags_are_config_errors(argv, words):
    with pytest.raises(ConfigError, match=words):
        config_from_args(build_parser().parse_args(argv))


def test_cli_builds_config(tmp_path, monkeypatch):
    (tmp_path / "opt.py").write_text("")
    monkeypatch.chdir(tmp_path)
    ns = build_parser().parse_args(["-n", "3", "-s", "2", "--env", "A=1=2", "--kvstore",
                                    "dist_async", "--optimizer-module", "opt.py",
                                    "--optimizer-module", "pkg.mod", "--start-timeout", "7",
                                    "train.py", "--epochs", "3"])
    cfg = config_from_args(ns)
    assert (cfg.num_workers, cfg.num_servers, cfg.kvstore, cfg.start_timeout) == (3, 2, "dist_async", 7)
    assert cfg.env == (("A", "1=2"),)
    assert cfg.optimizer_modules == (str(tmp_path / "opt.py"), "pkg.mod")
    assert cfg.script == "train.py" and cfg.script_args == ("--epochs", "3")
    assert parse_env_pairs(["X="]) == (("X", ""),)
    assert parse_env_pairs(["TOKEN"], {"TOKEN": "s3cr3t"}) == (("TOKEN", "s3cr3t"),)
    assert resolve_modules([], "/") == ()


def test_backend_choice():
    assert choose_backend(_config(), env={}) == "local"
    assert choose_backend(_config(), env={"SLURM_JOB_ID": "5"}) == "slurm"
    assert choose_backend(_config(backend="mpi"), env={"SLURM_JOB_ID": "5"}) == "mpi"


# --- output and statuses -----------------------------------------------------------------------
def test_framing_round_trip_and_plain_lines():
    assert parse_frame(frame_output(3, "hello \x1e world")) == (3, "o", "hello \x1e world")
    assert parse_frame(frame_event(0, event="exit", code=7, signal=None)) == (
        0, "e", {"event": "exit", "code": 7, "signal": None})
    assert parse_frame("plain line") is None
    assert parse_frame("\x1ex:o\x1etext") is None


def test_line_sink_prefixes_keeps_tail_and_log(tmp_path):
    out = io.StringIO()
    sink = LineSink("worker 3@hostA", str(tmp_path), out, tail=2)
    for n in range(3):
        sink.write(f"line {n}\n")
    sink.close()
    assert out.getvalue().splitlines() == [f"[worker 3@hostA] line {n}" for n in range(3)]
    assert list(sink.tail) == ["line 1", "line 2"]
    assert (tmp_path / "worker-3-at-hostA.log").read_text().splitlines() == ["line 0", "line 1", "line 2"]


def test_exit_status():
    assert ExitStatus.from_returncode(0).ok
    s = ExitStatus.from_returncode(-9)
    assert (s.signal, s.exit_code, s.ok) == (9, 137, False) and "SIGKILL" in s.describe()
    assert ExitStatus(code=7).exit_code == 7 and "code 7" in ExitStatus(code=7).describe()
    assert ExitStatus(code=0, lost=True).exit_code == 1


def test_agent_of_local_rank_0_sweeps_its_hosts_segments():
    from psframe.aggregation import shm
    from psframe_launcher.agent import sweep_host_tier
    scheduler = f"tcp://10.9.9.9:{os.getpid()}"
    prefix = shm.job_prefix(scheduler)
    shm.Segment.create(f"{prefix}-left", 64)
    env = {envc.ROLE: "worker", envc.LOCAL_RANK: "1", envc.SCHEDULER: scheduler}
    sweep_host_tier(env)                       # not the rank that holds the aggregator
    assert shm.leftovers(prefix) == [f"{prefix}-left"]
    sweep_host_tier(dict(env, **{envc.LOCAL_RANK: "0"}))
    assert shm.leftovers(prefix) == []


def test_line_sink_shows_a_line_rewritten_with_carriage_returns_as_its_final_state(tmp_path):
    """A progress bar redraws its line with \\r: the prefix stays at the line's start, and the
    terminal, the tail and the log get the last drawing, not every fragment."""
    out = io.StringIO()
    sink = LineSink("worker 0@hostA", str(tmp_path), out)
    sink.write("  0%|          | 0/21\r 50%|#####     | 10/21\r100%|##########| 21/21\n")
    sink.write("\r 10%|#         | 2/21\r          \repoch 1 loss 0.5\n")    # tqdm.write over a bar
    sink.write("\r 10%|#         | 2/21\r                    \r")             # a bar that cleared itself
    sink.write("\n")                                                            # a real empty line
    sink.close()
    expected = ["100%|##########| 21/21", "epoch 1 loss 0.5", ""]
    assert out.getvalue().split("\n")[:-1] == [f"[worker 0@hostA] {t}".rstrip() if t else "[worker 0@hostA] "
                                               for t in expected]
    assert "\r" not in out.getvalue()
    assert (tmp_path / "worker-0-at-hostA.log").read_text().split("\n")[:-1] == expected
    assert list(sink.tail) == expected


def test_start_timeout_help_says_what_happens_and_the_default():
    from psframe_launcher.cli import build_parser
    text = " ".join(build_parser().format_help().split())
    assert ("--start-timeout SECONDS seconds every process has to register with the scheduler; "
            "after that the job fails naming who is missing (default: 60") in text, text
