"""The gradient-compression comparison of ``psframe-bench --compression``: the same pushpull
sizes, uncompressed and with each compression asked for, in one run. It reports the bytes the
servers received per pushpull (their ``bytes_in_wire`` counters), the round time and the CPU
time of every worker and server per pushpull, each as a ratio to uncompressed float32. On
loopback the link is not the limit, so the CPU ratio shows what compressing and decoding cost
(the CPU time, unlike the round time, holds still on a loaded machine); across a slow link the
round time shows what they save."""
from . import cases, report

TYPES = ("fp16", "2bit")


def parse_types(text):
    """``"2bit,fp16"`` -> ``["2bit", "fp16"]``.

    Raises:
        ValueError: an unknown type.
    """
    types = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in types if t not in TYPES]
    if bad:
        raise ValueError(f"--compression {text!r}: {', '.join(bad)} is not one of {', '.join(TYPES)}")
    return types


def config_of(kind, threshold):
    return {"type": "2bit", "threshold": threshold} if kind == "2bit" else {"type": kind}


def measure(run_job, ns, kind, sizes, types):
    """Run one job per compression (``none`` first) over ``sizes``; returns report rows."""
    common = {"rounds": ns.rounds, "warmup": ns.warmup, "optimizer": None, "count_bytes": True}
    job = f"{ns.num_servers}x{ns.num_workers}"
    results = {}
    for t in ("none", *types):
        spec = dict(common, cases=[cases.size_case(n, ["pushpull"]) for n in sizes],
                    compression=config_of(t, ns.threshold) if t != "none" else None)
        results[t] = run_job(ns.num_workers, ns.num_servers, kind, spec, ns, tag=f".{t}")
    rows = []
    for n in sizes:
        label = f"size-{n}"
        base = None
        for t in ("none", *types):
            ms = report.round_medians(results[t], label)["pushpull"]
            case = next(c for c in results[t][0]["cases"] if c["label"] == label)
            per = case["wire_bytes"] / (case["pushes"] * ns.num_workers)
            cpu = (sum(next(c for c in r["cases"] if c["label"] == label)["cpu_s"] for r in results[t])
                   + case["server_cpu_s"]) / case["pushes"]
            row = {"job": job, "kind": kind, "compression": t, "nbytes": n, "pushpull_s": ms,
                   "bytes_per_pushpull": per, "cpu_s_per_pushpull": cpu}
            if base is None:
                base = row
            row["bytes_ratio"], row["time_ratio"] = per / base["bytes_per_pushpull"], ms / base["pushpull_s"]
            row["cpu_ratio"] = cpu / base["cpu_s_per_pushpull"]
            rows.append(row)
    return rows


def targets(rows):
    """The issue's byte target (2bit <= 1/15 of float32), per size."""
    return [{"name": f"{r['job']} pushpull {cases.format_size(r['nbytes'])}: bytes pushed with 2bit / float32",
             "ratio": r["bytes_ratio"], "limit": round(1 / 15, 4)}
            for r in rows if r["compression"] == "2bit"]


def table(rows):
    """Plain-text table: bytes and time per pushpull, each against uncompressed."""
    head = ["job", "size", "compression", "pushed B/pushpull", "vs none", "pushpull ms", "vs none",
            "CPU ms/pushpull", "vs none"]
    lines = [[r["job"], cases.format_size(r["nbytes"]), r["compression"], f"{r['bytes_per_pushpull']:.0f}",
              f"{r['bytes_ratio']:.4f}x", f"{r['pushpull_s'] * 1e3:.2f}", f"{r['time_ratio']:.2f}x",
              f"{r['cpu_s_per_pushpull'] * 1e3:.1f}", f"{r['cpu_ratio']:.2f}x"]
             for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])
