"""Every package directory is declared in setup.cfg, so a fresh install has all of them."""
import configparser
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = set()
    for top, name in (("psframe", "psframe"), ("launcher", "psframe_launcher")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"missing from setup.cfg: {found - listed}; stale: {listed - found}"


def test_the_torch_example_without_torch_says_which_extra_to_install():
    """``make demo`` installs no torch: examples/train_torch.py must say how to get it, not end
    in an ImportError traceback."""
    import subprocess
    import sys
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['train_torch.py']; "
            "runpy.run_path(%r, run_name='__main__')"
            % str(ROOT / "examples" / "train_torch.py"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "pip install -e '.[torch]'" in proc.stderr and "torch==2.13.0" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
