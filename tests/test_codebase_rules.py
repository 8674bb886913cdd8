"""Rules of the code base, checked by reading the source: no pickle, layered imports."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("psframe", "launcher", "examples") for p in (ROOT / d).rglob("*.py")]

# lower layers never import higher ones (each layer can be read and tested without those above);
# every top-level module or package of psframe/ must be here (except __init__, the public API,
# which may import anything)
LAYER = {"errors": 0, "config": 0, "logs": 0, "arrays": 1, "timeline": 1, "compression": 1,
         "rowsparse": 1, "protocol": 2,
         "transport": 3, "sharding": 4, "optim": 4, "aggregation": 4,
         # checkpoint files on storage: below the server and the client that use them
         "checkpoint": 4,
         "server": 5, "scheduler": 5,
         "kvstore": 6,
         # a side branch for training scripts: above the core, so no core module imports it
         "data": 7,
         # integrations and tools on top of everything
         "torch": 8, "bench": 8, "deploy": 8}
# side branches may import only these (not the core they sit beside)
SIDE_BRANCH = {"data": {"errors", "config", "logs", "arrays"},
               "checkpoint": {"errors", "config", "logs", "arrays"}}
# inside a package, modules import downwards too; every module of these packages must be here
PACKAGE_LAYER = {
    # the worker client: what a call's arguments may be; the interface, records, pure grouping
    # and the checkpoint steps (which reach a store through a small adapter, importing no other
    # module here), then routes to servers / request tracking / failure handling, the outgoing
    # message builders over those, the API built from them all
    "kvstore": {"arguments": 0, "base": 1, "fusion": 1, "call_record": 1, "checkpointing": 1,
                "local": 2, "routes": 2, "requests": 2, "failures": 2, "messages": 3, "rows": 3,
                "sparse_calls": 4, "dist": 5,
                # the host tier: the notes and records, the workers' side (dist routes data calls
                # to it), the aggregator's own uplink to the servers (built like the client), and
                # the aggregator itself
                "host_notes": 1, "host_segments": 2, "host_tier": 3, "host_uplink": 4,
                "host_aggregator": 5},
    # psframe.torch: the buckets and the overlap machinery under the public optimizers
    "torch": {"buckets": 0, "overlap": 0},
}


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


def _targets(rel, name, node):
    """The top-level psframe modules/packages an import of ``psframe/<rel>`` refers to
    (relative or absolute); ``from .. import X`` names them in its imported names."""
    if name.startswith("."):
        depth = len(name) - len(name.lstrip("."))
        package = ("psframe",) + rel.parts[:-1]           # what "." means in this file
        base = package[:len(package) - (depth - 1)]
        full = base + tuple(p for p in name.lstrip(".").split(".") if p)
    elif name == "psframe" or name.startswith("psframe."):
        full = tuple(name.split("."))
    else:
        return []
    if len(full) >= 2:
        return [full[1]]
    if isinstance(node, ast.ImportFrom):                  # from psframe / from .. import X, Y
        return [a.name for a in node.names]
    return []                                             # import psframe: the public API


def _layer_violations():
    bad = []
    for path in sorted((ROOT / "psframe").rglob("*.py")):
        rel = path.relative_to(ROOT / "psframe")
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        assert own in LAYER, f"psframe/{rel.parts[0]} has no layer in LAYER: add it"
        for name, node in _imports(path):
            for target in _targets(rel, name, node):
                if target == own or target not in LAYER:
                    continue                              # same package, or not a psframe module
                wrong = LAYER[target] > LAYER[own] or (
                    own in SIDE_BRANCH and target not in SIDE_BRANCH[own])
                # lazy imports inside functions (e.g. the optimizer registry) are allowed
                if wrong and node.col_offset == 0:
                    bad.append(f"psframe/{rel}:{node.lineno} ({own}) imports {target}")
    return bad


def test_layers_import_downwards_only():
    bad = _layer_violations()
    assert not bad, bad


def _package_violations(package, layers):
    bad = []
    for path in sorted((ROOT / "psframe" / package).glob("*.py")):
        own = path.stem
        if own == "__init__":
            continue
        assert own in layers, f"psframe/{package}/{path.name} has no layer in PACKAGE_LAYER: add it"
        for name, node in _imports(path):
            if name.startswith(".") and not name.startswith(".."):
                targets = [name[1:].split(".")[0]] if name != "." else [a.name for a in node.names]
            elif name.startswith(f"psframe.{package}."):
                targets = [name.split(".")[2]]
            else:
                continue
            for target in targets:
                if target in layers and target != own and layers[target] >= layers[own] \
                        and node.col_offset == 0:
                    bad.append(f"psframe/{package}/{path.name}:{node.lineno} imports {target}")
    return bad


def test_modules_inside_a_package_import_downwards_only():
    bad = [b for package, layers in PACKAGE_LAYER.items() for b in _package_violations(package, layers)]
    assert not bad, bad


def test_layer_rule_sees_from_dot_dot_import_names():
    """``from .. import X`` has no module: the target comes from the imported names."""
    node = ast.parse("from .. import kvstore, config").body[0]
    assert _targets(pathlib.Path("server/service.py"), "..", node) == ["kvstore", "config"]
    node = ast.parse("from . import arrays").body[0]
    assert _targets(pathlib.Path("sharding.py"), ".", node) == ["arrays"]
    node = ast.parse("from .shard import S").body[0]
    assert _targets(pathlib.Path("server/service.py"), ".shard", node) == ["server"]
    node = ast.parse("from psframe.data import x").body[0]
    assert _targets(pathlib.Path("kvstore/dist.py"), "psframe.data", node) == ["data"]


def test_psframe_never_imports_the_launcher():
    for path in (ROOT / "psframe").rglob("*.py"):
        for name, node in _imports(path):
            assert not name.startswith("psframe_launcher"), f"{path}:{node.lineno}"


# Pure state inside the service packages: events in, replies/sends out; no sockets, threads or
# clocks, so every rule of merging and membership is testable without a process
PURE_STATE = ("server/shard.py", "server/entry.py", "server/updates.py", "server/sparse.py", "scheduler/membership.py",
              "sharding.py")
IMPURE = {"zmq", "socket", "threading", "time", "os", "transport", "timeline"}


def test_pure_state_modules_do_no_io():
    bad = []
    for rel in PURE_STATE:
        path = ROOT / "psframe" / rel
        for name, node in _imports(path):
            mods = {name.split(".")[0]} | set(_targets(pathlib.Path(rel), name, node))
            if mods & IMPURE:
                bad.append(f"psframe/{rel}:{node.lineno} imports {name}")
    assert not bad, bad


def test_services_share_one_request_loop_and_dispatch_rule():
    """The scheduler and the servers answer requests through ``transport.requests.RequestLoop``
    (one receive-and-reply loop, ``handle_<command>`` dispatch) and watch the scheduler through
    ``transport.link`` only: no service has a loop or a heartbeat of its own."""
    for rel in ("scheduler/service.py", "server/service.py"):
        text = (ROOT / "psframe" / rel).read_text()
        assert "(RequestLoop)" in text, rel
        assert "def _drain" not in text and "recv_frames" not in text, rel
        assert "Command.HEARTBEAT" not in text, rel
