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
