"""Turning raw timings into the bench's table, target verdicts, JSON and plot."""
import json
import statistics

from .cases import format_size

MS = 1000.0


def round_medians(worker_results, label):
    """{op: median over rounds of the slowest worker's time} for case ``label``."""
    per_worker = [next(c for c in r["cases"] if c["label"] == label)["times"] for r in worker_results]
    out = {}
    for op in per_worker[0]:
        rounds = zip(*(w[op] for w in per_worker))
        out[op] = statistics.median(max(r) for r in rounds)
    return out


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds else 0.0


def _fmt_ms(s):
    return "-" if s is None else f"{s * MS:.2f}"


def _fmt_x(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}x"


def table(rows):
    """A plain-text table of the measured rows."""
    head = ["job", "kind", "case", "size", "push ms", "pull ms", "pushpull ms", "GB/s",
            "zmq rt ms", "vs zmq", "raw ps ms", "vs raw ps", "gloo ms", "vs gloo"]
    lines = []
    for r in rows:
        pp = r["ms"].get("pushpull")
        lines.append([r["job"], r["kind"], r["case"], format_size(r["nbytes"]),
                      _fmt_ms(r["ms"].get("push")), _fmt_ms(r["ms"].get("pull")), _fmt_ms(pp),
                      f"{gbps(r['nbytes'], pp):.2f}" if pp else "-",
                      _fmt_ms(r.get("zmq")), _fmt_x(pp, r.get("zmq")),
                      _fmt_ms(r.get("raw_traffic")), _fmt_x(pp, r.get("raw_traffic")),
                      _fmt_ms(r.get("gloo")), _fmt_x(pp, r.get("gloo"))])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])


def targets_text(targets):
    lines = []
    for t in targets:
        verdict = "n/a" if t["ratio"] is None else ("holds" if t["ratio"] <= t["limit"] else "SHORT")
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        lines.append(f"  [{verdict:>5}] {t['name']}: {ratio} (target <= {t['limit']}x){t.get('note', '')}")
    return "\n".join(lines)


def write_json(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)


def plot(path, report):
    """Bandwidth (payload bytes / round time) vs size: psframe against each baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
    series = {}
    for r in report["rows"]:
        if r["case"].startswith("size") and r["ms"].get("pushpull"):
            series.setdefault(f"psframe pushpull {r['job']} {r['kind']}", []).append(
                (r["nbytes"], gbps(r["nbytes"], r["ms"]["pushpull"])))
    base = report["baselines"]
    for name, key in (("raw pyzmq round trip", "zmq"), ("numpy copy", "numpy_copy"),
                      ("raw pyzmq moving the 1-server job's traffic", "raw_traffic_1server"),
                      ("raw pyzmq moving the multi-server job's traffic", "raw_traffic"),
                      ("gloo allreduce (2 procs)", "gloo")):
        pts = sorted((int(n), gbps(int(n), s)) for n, s in base.get(key, {}).items())
        if pts:
            series[name] = pts
    for name, pts in series.items():
        pts.sort()
        style = "--" if not name.startswith("psframe") else "-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("payload bytes")
    ax.set_ylabel("GB/s (payload / round time)")
    ax.set_title("psframe-bench on 127.0.0.1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
