"""Rules of the code base, checked by reading the source: no pickle, layered imports."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("psframe", "launcher", "examples") for p in (ROOT / d).rglob("*.py")]

# lower layers never import higher ones (STYLE.md "Import direction")
LAYER = {"errors": 0, "config": 0, "logs": 0, "arrays": 1, "protocol": 2, "transport": 3,
         "sharding": 4, "optim": 4, "aggregation": 4, "server": 5, "scheduler": 5, "kvstore": 6}


def _imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or ""), node


def test_no_pickle_anywhere():
    offenders = []
    for path in SOURCES:
        text = path.read_text()
        for name, node in _imports(path):
            if name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
        if "allow_pickle=True" in text:
            offenders.append(f"{path.relative_to(ROOT)} uses allow_pickle=True")
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("eval", "exec", "__import__")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.func.id}")
    assert not offenders, offenders


def test_layers_import_downwards_only():
    bad = []
    for path in (ROOT / "psframe").rglob("*.py"):
        rel = path.relative_to(ROOT / "psframe")
        own = rel.parts[0].removesuffix(".py")
        if own not in LAYER:
            continue
        for name, node in _imports(path):
            if not name.startswith("."):
                continue
            depth = len(name) - len(name.lstrip("."))
            target = name.lstrip(".").split(".")[0]
            if depth == 1 and len(rel.parts) > 1:
                continue                      # sibling inside the same package
            if target in LAYER and LAYER[target] > LAYER[own]:
                # lazy imports inside functions (e.g. the optimizer registry) are allowed
                if node.col_offset == 0:
                    bad.append(f"psframe/{rel}:{node.lineno} ({own}) imports {target}")
    assert not bad, bad


def test_psframe_never_imports_the_launcher():
    for path in (ROOT / "psframe").rglob("*.py"):
        for name, node in _imports(path):
            assert not name.startswith("psframe_launcher"), f"{path}:{node.lineno}"
