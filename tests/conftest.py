"""Shared test plumbing: CI strictness for real components, time scaling, child-process leak check."""
import importlib
import os
import shutil
import sys

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TIME_FACTOR = float(os.environ.get("PSFRAME_TEST_TIME_FACTOR", "1"))
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
LAUNCH = os.path.join(os.path.dirname(sys.executable), "psframe-launch")


def require(condition, what):
    """Skip when a real component is missing, but fail under CI=true (a missing component there
    is a broken set-up, never a reason to skip)."""
    if condition:
        return
    if CI:
        pytest.fail(f"CI=true and {what} is missing; `make test` installs it (as root)")
    pytest.skip(f"{what} is missing")


def optional_import(name):
    """The module, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def requires(module, what):
    """A fixture body for test files that need an optional package: skips each test when
    ``module`` is None, fails it under CI=true."""
    def check():
        require(module is not None, what)
    return check


def require_exe(name):
    path = shutil.which(name)
    require(path is not None, f"executable {name!r}")
    return path


def _children():
    try:
        import psutil  # optional
    except ImportError:
        psutil = None
    if psutil:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    pids = set()
    me = str(os.getpid())
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[1] == me and fields[0] != "Z":
                    pids.add(int(d))
            except OSError:
                pass
    return pids


@pytest.fixture(autouse=True)
def no_leaked_children():
    """Every test reaps what it started: no direct child process may outlive it."""
    before = _children()
    yield
    leaked = _children() - before
    for pid in leaked:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except OSError:
            pass
    assert not leaked, f"test left child processes running: {sorted(leaked)}"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits dataset of examples/train_mlp.py, written as partitions (the example tests)."""
    require(os.path.exists(LAUNCH), "psframe-launch in the venv")
    sys.path.insert(0, EXAMPLES)
    import train_mlp
    url = str(tmp_path_factory.mktemp("digits"))
    train_mlp.write_digits(url)
    return url
