"""The README is a front door and docs/ the reference: no file cites a document its readers do
not have, every link resolves, the reference covers the API and the environment, and the
README's training script runs serially and on 10 workers as the README says."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import psframe
from psframe import config
from psframe.kvstore.base import KVStore

from conftest import LAUNCH

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ("api", "launcher", "optimizers", "data", "performance", "operations")
# documents that exist only where psframe was developed, and issue numbers
MD_NAME = re.compile(r"[\w.-]+\.md\b")
SECTION_OR_TICKET = re.compile(r"\u00a7|(?i:\bissue\s*#?\d+)")    # a section sign, a ticket number


def _text_files():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    for rel in out:
        path = ROOT / rel
        if path.is_file() and path.suffix not in (".png",):
            yield rel, path.read_text(errors="replace")


def test_no_file_cites_a_document_outside_the_repository():
    """Every markdown file a file mentions is a file of the repository, and nothing points at
    sections or tickets of documents its readers do not have."""
    files = dict(_text_files())
    ours = {pathlib.PurePosixPath(rel).name for rel in files}
    hits = [f"{rel}:{n}: {line.strip()}" for rel, text in files.items()
            for n, line in enumerate(text.splitlines(), 1)
            if SECTION_OR_TICKET.search(line) or set(MD_NAME.findall(line)) - ours]
    assert not hits, "\n".join(hits)


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    lines = readme.count("\n")
    assert 100 <= lines <= 170, f"README.md has {lines} lines; the reference belongs in docs/"
    for must in ("make demo", "make test", ". .venv/bin/activate", "psframe-launch -n 10 train.py",
                 "rescale_grad=1.0 / kv.num_workers", "summed, not averaged", "kv.rank",
                 "kv.num_workers", "pip install -e '.[torch]'"):
        assert must in readme, must
    for doc in DOCS:
        assert f"(docs/{doc}.md)" in readme, doc


def test_every_relative_link_resolves():
    bad = []
    for md in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if "://" not in target and not (md.parent / target).exists():
                bad.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not bad, bad


def test_api_reference_covers_every_method_and_attribute():
    api = (ROOT / "docs" / "api.md").read_text()
    methods = [n for n in vars(KVStore) if not n.startswith("_") and callable(getattr(KVStore, n))]
    assert {"init", "push", "pull", "pushpull", "set_optimizer", "barrier", "close"} <= set(methods)
    for name in methods + ["server_stats"]:
        assert f"`{name}(" in api, name
    for attr in ("kv.type", "kv.rank", "kv.num_workers", "kv.local_rank", "kv.local_size"):
        assert f"`{attr}`" in api, attr
    for err in ("ConfigError", "UninitializedKeyError", "DoubleInitError", "ShapeMismatchError",
                "DTypeMismatchError", "UnsupportedDTypeError", "OptimizerError", "ProtocolError",
                "PSTimeoutError", "PeerLostError", "JobAbortedError", "DataError"):
        assert f"`{err}`" in api and hasattr(psframe.errors, err), err


def test_every_environment_variable_is_documented_with_its_default():
    ops = (ROOT / "docs" / "operations.md").read_text()
    names = [v for k, v in vars(config).items() if k.isupper() and isinstance(v, str)
             and v.startswith("PSFRAME_")]
    assert len(names) >= 20
    for name in names:
        assert f"`{name}`" in ops, name
    for name, default in config.DEFAULTS.items():
        row = next(l for l in ops.splitlines() if l.startswith(f"| `{name}`"))
        shown = f"{default:,}" if isinstance(default, int) and default >= 10_000 else f"{default:g}"
        assert f"({shown}" in row or f"({shown} s" in row, (name, default, row)


@pytest.mark.integration
def test_the_readme_training_script_runs_serially_and_on_10_workers(tmp_path):
    code = re.search(r"```python\n(# train\.py.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert len(code.splitlines()) <= 22
    (tmp_path / "train.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSFRAME_")}
    for cmd, workers in (([sys.executable, "train.py"], 1), ([LAUNCH, "-n", "10", "train.py"], 10)):
        proc = subprocess.run(["timeout", "-s", "KILL", "120", *cmd], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        m = re.search(rf"{workers} worker\(s\): max error (\d+\.\d+)", proc.stdout)
        assert m and float(m.group(1)) < 0.05, proc.stdout[-3000:]
