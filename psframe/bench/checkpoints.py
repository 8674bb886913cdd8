"""``psframe-bench --mode checkpoint``: save and load time of a model-shaped parameter list (a
ResNet-50, 97.5 MiB of float32, with ``--optimizer`` its state too) through a job of
``-s`` servers, as a ratio to writing and reading the same bytes with plain ``numpy.save`` /
``numpy.load`` on fsspec files from one process, measured in the same run (before and after
the job; the faster counts)."""
import logging
import os
import posixpath
import shutil
import statistics
import tempfile
import time

import numpy as np

from ..checkpoint.files import Store
from . import cases

logger = logging.getLogger(__name__)

SLOTS = {"none": 0, "sgd": 1, "adam": 2}    # weight-shaped optimizer slots per key


def plain_numpy(url, arrays, options, rounds):
    """Median seconds to write and to read ``arrays`` as one ``.npy`` file each under ``url``
    with numpy through fsspec (one process, one file after another)."""
    import fsspec        # the checkpoint mode needs it; the transfer mode does not
    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    writes, reads = [], []
    for r in range(rounds + 1):                   # round 0 warms the store's client up
        folder = posixpath.join(root, f"round-{r}")
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            fs.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        for i, a in enumerate(arrays):
            with fs.open(posixpath.join(folder, f"{i}.npy"), "wb") as f:
                np.save(f, a, allow_pickle=False)
        writes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i, _ in enumerate(arrays):
            with fs.open(posixpath.join(folder, f"{i}.npy"), "rb") as f:
                np.load(f, allow_pickle=False)
        reads.append(time.perf_counter() - t0)
    _remove(fs, root)
    return statistics.median(writes[1:]), statistics.median(reads[1:])


def _remove(fs, root):
    try:
        fs.rm(root, recursive=True)
    except Exception as exc:      # leftovers are the only cost
        logger.warning("could not remove %s: %s", root, exc)


def measure(ns, run_job, optimizer_spec):
    """Every ``--checkpoint-url`` (default: a temporary local directory); returns report rows."""
    shapes = cases.scaled(cases.resnet50_shapes(), ns.model_scale)
    options = {"endpoint_url": ns.endpoint_url} if ns.endpoint_url else None
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    arrays = values * (1 + SLOTS[ns.optimizer])
    nbytes = sum(a.nbytes for a in arrays)
    tmp = None
    urls = ns.checkpoint_url or [tmp := tempfile.mkdtemp(prefix="psframe-bench-ckpt-")]
    rows = []
    try:
        for url in urls:
            stamp = f"{os.getpid()}-{int(time.time())}"
            base = [plain_numpy(f"{url.rstrip('/')}/plain-{stamp}-a", arrays, options, ns.rounds)]
            spec = {"shapes": [list(s) for s in shapes], "url": f"{url.rstrip('/')}/psframe-{stamp}",
                    "rounds": ns.rounds, "warmup": 1, "optimizer": optimizer_spec,
                    "storage_options": options}
            results = run_job(ns.num_workers, ns.num_servers, "dist_sync", spec, ns, tag=".checkpoint")
            base.append(plain_numpy(f"{url.rstrip('/')}/plain-{stamp}-b", arrays, options, ns.rounds))
            store = Store(spec["url"], options)
            _remove(store.fs, store.root)
            save = statistics.median(max(r["save"][i] for r in results) for i in range(ns.rounds))
            load = statistics.median(max(r["load"][i] for r in results) for i in range(ns.rounds))
            write, read = min(b[0] for b in base), min(b[1] for b in base)
            rows.append({"url": url, "nbytes": nbytes, "save": save, "load": load,
                         "plain_write": write, "plain_read": read,
                         "save_ratio": save / write, "load_ratio": load / read})
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def text(rows, ns):
    head = (f"checkpoint of a ResNet-50 parameter list ({len(cases.resnet50_shapes())} tensors"
            f"{'' if ns.model_scale == 1 else f', scale {ns.model_scale}'}; optimizer {ns.optimizer}), "
            f"{ns.num_servers} servers x {ns.num_workers} workers, medians of {ns.rounds} rounds:")
    lines = [head, f"{'storage':<40} {'bytes':>10} {'save s':>8} {'np write s':>10} {'save/np':>8} "
                   f"{'load s':>8} {'np read s':>10} {'load/np':>8}"]
    for r in rows:
        lines.append(f"{r['url'][:40]:<40} {cases.format_size(r['nbytes']):>10} {r['save']:8.3f} "
                     f"{r['plain_write']:10.3f} {r['save_ratio']:7.2f}x {r['load']:8.3f} "
                     f"{r['plain_read']:10.3f} {r['load_ratio']:7.2f}x")
    lines.append("target: save and load <= 1.5x plain numpy on the same storage "
                 + ("(met)" if all(r["save_ratio"] <= 1.5 and r["load_ratio"] <= 1.5 for r in rows)
                    else "(NOT met)"))
    return "\n".join(lines)
