"""``psframe-bench``: run real jobs through ``psframe-launch`` and compare them with baselines
measured in the same run (raw pyzmq round trip, raw pyzmq moving the same traffic, numpy
copy, gloo allreduce). Baselines run while no job does, before and after the jobs, and the
faster run counts. The raw pyzmq round trip is the best of every transport psframe may use on
the machine (``--transport ipc``: TCP and the unix socket; ``tcp``: TCP only). ``--hosts-netns N``
runs the multi-host mode instead (``multihost.py``)."""
import argparse
import logging
import os
import platform
import sys
import time

import zmq

from .. import optim
from . import baselines, cases, checkpoints, compression, multihost, report, raw_traffic, security
from .cases import parse_size, parse_sizes
from .runner import CHECKPOINT_SCRIPT, run_job

logger = logging.getLogger("psframe.bench")

OPS = ("push", "pull", "pushpull")
CHUNK = 1 << 20       # frame size of the chunked raw pyzmq baselines (the faster size there)
ESTIMATE = ("the default cases take about 2-3 minutes on an idle 2-core machine, longer when "
            "other jobs share it (fewer --sizes, --keys 0 or --model none take less); the table "
            "comes at the end")
DEFAULT_CASES = ("sizes", "allreduce_sizes", "keys", "model", "rounds", "kinds", "security")
OPTIMIZERS = {"none": None, "sgd": lambda: optim.SGD(lr=0.01, momentum=0.9), "adam": lambda: optim.Adam(lr=1e-3)}


def build_parser():
    first_sentence = " ".join(__doc__.split(". ")[0].split()) + "."
    p = argparse.ArgumentParser(prog="psframe-bench", description=first_sentence, epilog=f"Time: {ESTIMATE}.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=("transfer", "checkpoint"), default="transfer",
                   help="transfer: push/pull/pushpull against raw pyzmq and gloo; checkpoint: "
                        "save/load of a ResNet-50 (97.5 MiB) with -s servers against plain numpy "
                        "files on the same storage")
    p.add_argument("--checkpoint-url", action="append", default=[], metavar="URL",
                   help="checkpoint mode: storage to measure (repeatable; none: a temporary local "
                        "directory; s3://bucket/prefix with --endpoint-url for S3-compatible stores)")
    p.add_argument("--endpoint-url", default=None, help="checkpoint mode: S3 endpoint of s3:// URLs")
    p.add_argument("--sizes", default="4KiB,64KiB,1MiB,16MiB,100MiB",
                   help="key sizes of the 1-server job (comma list; KiB/MiB suffixes)")
    p.add_argument("--allreduce-sizes", default="16MiB,100MiB",
                   help="key sizes of the multi-server job, compared with gloo allreduce")
    p.add_argument("-n", dest="num_workers", type=int, default=None,
                   help="workers per job (default 2; with --hosts-netns, 2 per host)")
    p.add_argument("-s", dest="num_servers", type=int, default=None,
                   help="servers of the multi-server job (default 2; with --hosts-netns, one per "
                        "host; the size sweep uses 1)")
    p.add_argument("--kinds", default="dist_sync", help="kvstore kinds (dist_sync,dist_async)")
    p.add_argument("--keys", type=int, default=1000, help="keys in the many-small-keys case (0: skip)")
    p.add_argument("--key-size", default="4KiB", help="bytes per key in the many-small-keys case")
    p.add_argument("--model", choices=("resnet50", "none"), default="resnet50",
                   help="model-shaped parameter list case")
    p.add_argument("--model-scale", type=float, default=1.0, help="shrink the model (tests)")
    p.add_argument("--rounds", type=int, default=10,
                   help="timed rounds per measurement (small payloads get more: up to 256 MiB "
                        "of payload, at most 20 times this)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="none",
                   help="what the servers apply to each step's sum (none: they only sum, as an "
                        "allreduce does; sgd: momentum 0.9; adam): shows what updates cost")
    p.add_argument("--no-gloo", action="store_true", help="skip the torch gloo baseline")
    p.add_argument("--tier-workers", type=int, default=4,
                   help="workers of the host-tier job: one host, -s servers, the allreduce sizes "
                        "and the model list, run through the host tier and flat (--no-host-tier); "
                        "0 skips it")
    p.add_argument("--transport", choices=("ipc", "tcp"), default="ipc",
                   help="how workers reach servers on this machine (PSFRAME_IPC), and what the raw "
                        "pyzmq baselines may use: ipc (psframe's default: big entries over the unix "
                        "socket, the rest over TCP) or tcp (TCP only)")
    p.add_argument("--security", default=None, metavar="MODES",
                   help="instead of the usual jobs: pushpull at 1, 16 and 100 MiB (1 server) under "
                        "each of these psframe-launch --security modes (e.g. none,token,curve), as "
                        "ratios to the first")
    p.add_argument("--compression", default="",
                   help="also compare gradient compression (comma list of fp16, 2bit) against "
                        "uncompressed pushpull in the multi-server job: bytes pushed and time")
    p.add_argument("--threshold", type=float, default=0.5, help="2bit threshold of --compression")
    p.add_argument("--compression-sizes", default="16MiB,100MiB",
                   help="key sizes of the --compression comparison")
    p.add_argument("--sparse-table", default="", metavar="ROWSxDIM",
                   help="also run the sparse-key job: a float32 table of ROWSxDIM (e.g. 4000000x64, "
                        "1 GiB) on -s servers, pushpull of --sparse-fraction of its rows vs dense "
                        "pushpulls of the whole table and of just those bytes ('': skip)")
    p.add_argument("--sparse-fraction", type=float, default=0.01,
                   help="fraction of the sparse table's rows each worker's pushpull names")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot bandwidth vs size")
    p.add_argument("--timeline", metavar="FILE.json",
                   help="also record a Chrome trace of the jobs (PSFRAME_TIMELINE)")
    p.add_argument("--job-timeout", type=float, default=600, help="seconds per job")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the jobs' output")
    multihost.add_arguments(p)
    return p


def _rows(job, kind, spec, results, raw_rt=None):
    """Report rows of one job; a size case gets the best raw pyzmq round trip of its bytes."""
    rows = []
    for case in spec["cases"]:
        row = {"job": job, "kind": kind, "case": case["label"], "nbytes": case["nbytes"],
               "ms": report.round_medians(results, case["label"])}
        if raw_rt and case["label"].startswith("size-"):
            row["zmq_by_way"] = raw_rt[case["nbytes"]]
            row["zmq_way"], row["zmq"] = min(row["zmq_by_way"].items(), key=lambda kv: kv[1])
        rows.append(row)
    return rows


def _faster(runs):
    """Per size and way, the faster of several ``zmq_roundtrips`` results (strict baseline)."""
    return {n: {way: min(r[n][way] for r in runs) for way in runs[0][n]} for n in runs[0]}


def _host_bytes(results):
    """Bytes the servers received from the job's one host (``server_stats``)."""
    return sum(c.get("bytes", 0) for s in results[0]["servers"] for c in s.get("hosts", {}).values())


def _memory(results):
    s, idle = results[0]["servers"][0], results[0]["idle_servers"][0]
    return {"held": s.get("held_bytes"), "rss": s.get("rss_bytes"), "peak_rss": s.get("peak_rss_bytes"),
            "idle_rss": idle.get("rss_bytes")}


def measure(ns):
    """Run every job and baseline; returns the report dict."""
    sizes, big = parse_sizes(ns.sizes), parse_sizes(ns.allreduce_sizes)
    key_bytes = parse_size(ns.key_size)
    make_optimizer = OPTIMIZERS[ns.optimizer]
    common = {"rounds": ns.rounds, "warmup": ns.warmup,
              "optimizer": optim.to_spec(make_optimizer()) if make_optimizer else None}
    spec1 = dict(common, cases=[cases.size_case(n, OPS) for n in sizes])
    if ns.keys:
        spec1["cases"] += [cases.keys_case(ns.keys, key_bytes, ["pushpull"]),
                           cases.one_key_case("onekey-of-keys", ns.keys * key_bytes, ["pushpull"])]
    model = None
    if ns.model == "resnet50":
        model = cases.model_case("resnet50", cases.scaled(cases.resnet50_shapes(), ns.model_scale), ["pushpull"])
        spec1["cases"] += [model, cases.one_key_case("onekey-of-model", model["nbytes"], ["pushpull"])]
    rep = {"rows": [], "baselines": {}, "memory": None,
           "machine": {"python": platform.python_version(), "pyzmq": zmq.__version__,
                       "cpus": os.cpu_count(), "platform": platform.platform()},
           "config": vars(ns)}
    kinds = [k for k in ns.kinds.split(",") if k]
    job1 = f"1x{ns.num_workers}"
    # raw pyzmq round trips on a quiet machine, before and after the jobs; the faster counts
    all_sizes = sorted(set(sizes) | set(big))
    zmq_runs = [baselines.zmq_roundtrips(all_sizes, ns.transport, ns.rounds, ns.warmup, CHUNK)]
    raw1 = (lambda: raw_traffic.measure(sizes, ns.num_workers, 1, ns.transport, ns.rounds, ns.warmup,
                                        CHUNK)) if sizes else None
    raw1_runs = [raw1()] if raw1 else []
    results1 = [(kind, run_job(ns.num_workers, 1, kind, spec1, ns)) for kind in kinds]
    if raw1:
        raw1_runs.append(raw1())
        rep["baselines"]["raw_traffic_1server"] = {n: min(r[n] for r in raw1_runs) for n in sizes}
    if sizes:
        # memory on its own: only the largest key is held, so RSS / held means what it says
        # (and no optimizer state: the target is about the values a server holds)
        mem_spec = dict(common, rounds=3, warmup=1, optimizer=None,
                        cases=[cases.size_case(max(sizes), ["pushpull"])])
        rep["memory"] = _memory(run_job(ns.num_workers, 1, kinds[0], mem_spec, ns, tag=".memory"))
    # baselines of the multi-server job, before and after it; the faster run counts (strict)
    others = {"raw_traffic": lambda: raw_traffic.measure(big, ns.num_workers, ns.num_servers, ns.transport,
                                                 ns.rounds, ns.warmup, CHUNK)} if big else {}
    if big and not ns.no_gloo and baselines.torch_available():
        others["gloo"] = lambda: baselines.gloo_allreduce(big, ns.num_workers, ns.rounds, ns.warmup)
    runs = {name: [fn()] for name, fn in others.items()}
    results2, spec2 = [], None
    if big:
        spec2 = dict(common, cases=[cases.size_case(n, OPS) for n in big])
        results2 = [(kind, run_job(ns.num_workers, ns.num_servers, kind, spec2, ns)) for kind in kinds]
    for name, fn in others.items():
        runs[name].append(fn())
        rep["baselines"][name] = {n: min(r[n] for r in runs[name]) for n in big}
    results3, spec3 = [], None
    if ns.sparse_table:
        rows, dim = parse_table(ns.sparse_table)
        spec3 = dict(common, cases=cases.sparse_cases(rows, dim, ns.sparse_fraction, ["pushpull"]))
        results3 = [(kinds[0], run_job(ns.num_workers, ns.num_servers, kinds[0], spec3, ns, tag=".sparse"))]
    if ns.tier_workers and (big or model):
        # the host tier against flat: the same job, one after the other
        spec3 = dict(common, cases=[cases.size_case(n, ["pushpull"]) for n in big] + ([model] if model else []))
        for mode in ("tier", "flat"):
            job = f"{ns.num_servers}x{ns.tier_workers} {mode}"
            res = run_job(ns.tier_workers, ns.num_servers, kinds[0], spec3, ns, tag=f".{mode}",
                          host_tier=mode == "tier")
            rep["rows"] += _rows(job, kinds[0], spec3, res)
            rep["host_bytes"] = dict(rep.get("host_bytes", {}), **{job: _host_bytes(res)})
    zmq_runs.append(baselines.zmq_roundtrips(all_sizes, ns.transport, ns.rounds, ns.warmup, CHUNK))
    raw_rt = _faster(zmq_runs)
    rep["server_updates"] = {}
    jobs = ((job1, spec1, results1), (f"{ns.num_servers}x{ns.num_workers}", spec2, results2),
            (f"{ns.num_servers}x{ns.num_workers} sparse", spec3, results3))
    for job, spec, results_by_kind in jobs:
        for kind, results in results_by_kind:
            rep["rows"] += _rows(job, kind, spec, results, raw_rt)
            rep["server_updates"][f"{job} {kind}"] = sum(s.get("updates", 0) for s in results[0]["servers"])
    rep["baselines"]["numpy_copy"] = {n: baselines.numpy_copy(n, ns.rounds) for n in all_sizes}
    rep["baselines"]["zmq"] = {n: min(ways.values()) for n, ways in raw_rt.items()}
    for row in rep["rows"]:
        if not row["case"].startswith("size-"):
            continue
        if row["job"] == job1:
            row["raw_traffic"] = rep["baselines"].get("raw_traffic_1server", {}).get(row["nbytes"])
        else:
            row["gloo"] = rep["baselines"].get("gloo", {}).get(row["nbytes"])
            row["raw_traffic"] = rep["baselines"].get("raw_traffic", {}).get(row["nbytes"])
    rep["targets"] = targets(rep, job1, kinds[0])
    types = compression.parse_types(ns.compression)
    if types:
        rep["compression"] = compression.measure(run_job, ns, kinds[0], parse_sizes(ns.compression_sizes), types)
        rep["targets"] += compression.targets(rep["compression"])
    return rep


def parse_table(text):
    """``'4000000x64'`` -> (4000000, 64).

    Raises:
        ValueError: not ROWSxDIM of positive ints.
    """
    try:
        rows, dim = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sparse-table {text!r} is not ROWSxDIM (e.g. 4000000x64)") from None
    if rows < 1 or dim < 1:
        raise ValueError(f"--sparse-table {text!r}: rows and dim must be positive")
    return rows, dim


def _row(rep, job, kind, label):
    return next((r for r in rep["rows"] if r["job"] == job and r["kind"] == kind and r["case"] == label), {})


def _pp(rep, job, kind, label):
    return _row(rep, job, kind, label).get("ms", {}).get("pushpull")


def targets(rep, job1, kind):
    """The targets (docs/performance.md) as ratios of figures of this run."""
    out = []
    for n in (2 ** 20, 16 * 2 ** 20, 100 * 2 ** 20):
        row = _row(rep, job1, kind, f"size-{n}")
        pp, z, raw = _pp(rep, job1, kind, f"size-{n}"), row.get("zmq"), row.get("raw_traffic")
        way = row.get("zmq_way", "").replace("_chunked", f", {cases.format_size(CHUNK)} frames")
        note = f"best raw round trip: {way}" if way else ""
        if raw and z and pp:
            note += (f"; raw pyzmq moving the same traffic: {raw * 1e3:.2f} ms = {raw / z:.2f}x the "
                     f"round trip; psframe = {pp / raw:.2f}x that")
        out.append({"name": f"{job1} pushpull {cases.format_size(n)} / pyzmq round trip",
                    "ratio": pp / z if pp and z else None, "limit": 3,
                    "note": f"  [{note}]" if note else ""})
    jobs = sorted({r["job"] for r in rep["rows"]} - {job1} - {r["job"] for r in rep["rows"] if " " in r["job"]})
    for job in jobs:
        for n in (16 * 2 ** 20, 100 * 2 ** 20):
            pp, g = _pp(rep, job, kind, f"size-{n}"), rep["baselines"].get("gloo", {}).get(n)
            raw = rep["baselines"].get("raw_traffic", {}).get(n)
            note = "" if not (raw and g and pp) else (
                f"  [raw pyzmq moving the same traffic: {raw * 1e3:.1f} ms = {raw / g:.2f}x gloo; "
                f"psframe = {pp / raw:.2f}x that]")
            out.append({"name": f"{job} pushpull {cases.format_size(n)} / gloo allreduce",
                        "ratio": pp / g if pp and g else None, "limit": 2, "note": note})
    out += tier_targets(rep, kind)
    for case, ref, limit in (("keys-", "onekey-of-keys", 3), ("model-", "onekey-of-model", 1.5)):
        label = next((r["case"] for r in rep["rows"] if r["case"].startswith(case)), None)
        if label is None:        # the case was not run (--keys 0, --model none)
            continue
        a, b = _pp(rep, job1, kind, label), _pp(rep, job1, kind, ref)
        out.append({"name": f"{job1} pushpull {label} / one key of the same bytes",
                    "ratio": a / b if a and b else None, "limit": limit})
    sparse_rows = [r for r in rep["rows"] if r["job"].endswith(" sparse")]
    if sparse_rows:
        job = sparse_rows[0]["job"]
        by_kind = {r["case"].split("-")[0] + ("-" + r["case"].split("-")[1] if r["case"].startswith("dense") else ""):
                   r["case"] for r in sparse_rows}
        sp = _pp(rep, job, kind, by_kind["sparse"])
        for ref, limit in (("dense-table", 0.03), ("dense-touched", 2)):
            d = _pp(rep, job, kind, by_kind[ref])
            out.append({"name": f"{job}: pushpull {by_kind['sparse']} / {by_kind[ref]}",
                        "ratio": sp / d if sp and d else None, "limit": limit})
    mem = rep.get("memory")
    if mem and mem.get("held") and mem.get("peak_rss"):
        out.append({"name": f"server peak RSS / bytes it holds ({job1}, one {cases.format_size(mem['held'])} key)",
                    "ratio": mem["peak_rss"] / mem["held"], "limit": 3,
                    "note": f"  [peak {mem['peak_rss'] / 2**20:.0f} MiB, idle {mem['idle_rss'] / 2**20:.0f} MiB, "
                            f"holds {mem['held'] / 2**20:.0f} MiB; growth over idle / held = "
                            f"{(mem['peak_rss'] - mem['idle_rss']) / mem['held']:.2f}x]"})
    return out


def tier_targets(rep, kind):
    """Host tier / flat pushpull time of each case of the tier job (target 0.5x at 100 MiB;
    elsewhere the tier must at least not be slower), and against the gloo allreduce of the same
    bytes when that ran with as many ranks as the tier job has workers (target 1.0x)."""
    out = []
    sent = rep.get("host_bytes", {})
    config = rep.get("config", {})
    gloo = rep["baselines"].get("gloo", {}) if config.get("tier_workers") == config.get("num_workers") else {}
    for job in sorted({r["job"] for r in rep["rows"] if r["job"].endswith(" tier")}):
        flat = job[:-len(" tier")] + " flat"
        note = ""
        if sent.get(job) and sent.get(flat):
            note = f"  [bytes the servers received, flat / tier: {sent[flat] / sent[job]:.2f}x over the job]"
        for row in (r for r in rep["rows"] if r["job"] == job):
            a, b = _pp(rep, job, kind, row["case"]), _pp(rep, flat, kind, row["case"])
            out.append({"name": f"{job[:-len(' tier')]} pushpull {row['case']}: host tier / flat",
                        "ratio": a / b if a and b else None,
                        "limit": 0.5 if row["nbytes"] == 100 * 2 ** 20 else 1, "note": note})
            g = gloo.get(row["nbytes"])
            if g and row["case"].startswith("size-"):
                out.append({"name": f"{job} pushpull {cases.format_size(row['nbytes'])} / gloo allreduce",
                            "ratio": a / g if a else None, "limit": 1})
    return out


def main(argv=None):
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING,
                        format="psframe-bench: %(message)s")
    if ns.hosts_netns:
        return multihost.main(ns)
    ns.num_workers = 2 if ns.num_workers is None else ns.num_workers
    ns.num_servers = 2 if ns.num_servers is None else ns.num_servers
    if ns.mode == "checkpoint":
        return checkpoint_main(ns, time.monotonic())
    default = build_parser().parse_args([])
    if all(getattr(ns, a) == getattr(default, a) for a in DEFAULT_CASES):
        print(f"psframe-bench: {ESTIMATE}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    if ns.security:
        return main_security(ns, t0)
    try:
        rep = measure(ns)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"psframe-bench: error: {exc}", file=sys.stderr)
        return 1
    rep["elapsed_s"] = time.monotonic() - t0
    print(report.table(rep["rows"]))
    print()
    if rep.get("compression"):
        print("gradient compression (pushed bytes from the servers' counters; CPU: every worker's and "
              "server's, per pushpull; on loopback the CPU ratio is the cost of compressing):")
        print(compression.table(rep["compression"]))
        print()
    applied = f"; the servers apply {ns.optimizer}, the targets assume they only sum" if ns.optimizer != "none" else ""
    print(f"targets (medians of this run{applied}):")
    print(report.targets_text(rep["targets"]))
    base = rep["baselines"]["numpy_copy"]
    print("numpy copy GB/s: " + ", ".join(f"{cases.format_size(n)} {report.gbps(n, s):.1f}"
                                          for n, s in sorted(base.items())))
    if ns.optimizer != "none":
        print(f"servers applied {ns.optimizer}: " + ", ".join(f"{n} updates in the {job} job"
                                                            for job, n in rep["server_updates"].items()))
    print(f"({rep['elapsed_s']:.0f} s; times are medians over {ns.rounds} rounds of the slowest worker, "
          f"up to {cases.MAX_ROUNDS_FACTOR * ns.rounds} for small payloads)")
    if ns.json:
        report.write_json(ns.json, rep)
    if ns.plot:
        report.plot(ns.plot, rep)
    return 0


def main_security(ns, t0):
    """``--security MODES``: the same pushpull job under each mode, ratios to the first."""
    modes = list(dict.fromkeys(m for m in ns.security.split(",") if m))
    kind = ns.kinds.split(",")[0]
    try:
        figures = security.measure(
            lambda spec, mode: run_job(ns.num_workers, 1, kind, spec, ns, tag=f".{mode}",
                                       launch_args=("--security", mode)),
            modes, ns)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"psframe-bench: error: {exc}", file=sys.stderr)
        return 1
    print(f"1x{ns.num_workers} {kind} pushpull by psframe-launch --security mode "
          f"(medians over {ns.rounds} rounds of the slowest worker, the faster of 3 interleaved passes):")
    print(security.table(figures, base=modes[0]))
    print(f"({time.monotonic() - t0:.0f} s)")
    if ns.json:
        report.write_json(ns.json, {"security": {m: {str(n): s for n, s in f.items()} for m, f in figures.items()},
                                    "config": vars(ns)})


def checkpoint_main(ns, t0):
    make_optimizer = OPTIMIZERS[ns.optimizer]
    spec = optim.to_spec(make_optimizer()) if make_optimizer else None
    job = lambda *a, **k: run_job(*a, script=CHECKPOINT_SCRIPT, **k)   # noqa: E731
    try:
        rows = checkpoints.measure(ns, job, spec)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"psframe-bench: error: {exc}", file=sys.stderr)
        return 1
    print(checkpoints.text(rows, ns))
    print(f"({time.monotonic() - t0:.0f} s)")
    if ns.json:
        report.write_json(ns.json, {"checkpoint": rows, "config": vars(ns),
                                    "elapsed_s": time.monotonic() - t0})
    return 0
