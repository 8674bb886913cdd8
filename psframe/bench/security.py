"""``psframe-bench --security none,token,curve``: the cost of authentication and encryption.

The same 1-server pushpull job runs once per mode, the modes interleaved over ``repeats``
passes in rotated order (so neither a burst of load nor following another job lands on one
mode only); each mode's figure is the faster of its passes' medians (as the bench's
baselines: load only ever slows a run down), and every mode is reported as a ratio to the
first mode (``none``) of this run."""
from . import cases, report

SIZES = (2 ** 20, 16 * 2 ** 20, 100 * 2 ** 20)


def measure(run_job, modes, ns, repeats=3):
    """``{mode: {nbytes: seconds}}`` of pushpull, via ``run_job(spec, mode)`` (the bench's job
    runner: returns every worker's result)."""
    spec = {"rounds": ns.rounds, "warmup": ns.warmup, "optimizer": None,
            "cases": [cases.size_case(n, ["pushpull"]) for n in SIZES]}
    passes = {m: [] for m in modes}
    for r in range(repeats):
        # rotate the order: a job that follows another runs slower (the last one still exiting),
        # so every mode gets a pass in each position
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            results = run_job(spec, mode)
            passes[mode].append({n: report.round_medians(results, f"size-{n}")["pushpull"]
                                 for n in SIZES})
    return {m: {n: min(p[n] for p in runs) for n in SIZES} for m, runs in passes.items()}


def table(figures, base="none"):
    """Text: per size, each mode's ms and its ratio to ``base``."""
    modes = list(figures)
    head = ["size"] + [f"{m} ms" for m in modes] + [f"{m}/{base}" for m in modes if m != base]
    rows = []
    for n in SIZES:
        ref = figures.get(base, {}).get(n)
        rows.append([cases.format_size(n)] + [f"{figures[m][n] * 1e3:.2f}" for m in modes]
                    + [f"{figures[m][n] / ref:.3f}x" if ref else "-" for m in modes if m != base])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [head] + rows)
