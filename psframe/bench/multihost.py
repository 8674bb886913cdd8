"""``psframe-bench --hosts-netns N --link-rate RATE``: psframe against a gloo allreduce across
N hosts made of network namespaces (``netns.NetnsHosts``) whose links are shaped with tc. Prints
each one's time per round, the bytes that crossed a host's link (``/proc/net/dev`` inside the
namespace, and psframe's payload from ``server_stats``) and the ideal floors of three ways to
move a key between hosts (flat parameter server, ring allreduce, per-host tier). Root only;
removes everything it made, also on Ctrl-C and SIGTERM."""
import json
import math
import os
import signal
import sys

from ..transport.addresses import free_port
from . import baselines, compression, netns, report
from .cases import format_size, parse_sizes, rounds_for, size_case
from .runner import run_job

KIND = "dist_sync"
MB = 1e6

FLOORS_LEGEND = """\
floors: the payload one host's link must carry each way per round, divided by the link rate
(/proc/net/dev also counts TCP/IP headers: about 0.2% on these veths, which carry 64 KiB
segments, a few % on a real NIC; "of link" is the busier direction's share of the link's time):
  flat PS    each worker pushes the slices of the key held by servers on other hosts and pulls
             them back, and each host's servers answer every worker of the other hosts (psframe
             with one worker per host, or --no-host-tier)
  ring       ring allreduce over the ranks placed host by host: every ring edge carries
             2(n-1)/n of the key and one edge leaves each host (gloo)
  host tier  one sum per host: it pushes the slices held elsewhere once and pulls them back
             once, and its servers answer one request per other host (psframe, by default, on
             hosts with several workers)"""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGINT arrived: unwind (the ``finally`` clauses clean up) and exit
    128+N."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def add_arguments(parser):
    g = parser.add_argument_group("multi-host mode (root only; uses --allreduce-sizes, --rounds, "
                                  "--warmup, -n, -s, --no-gloo, --json, --job-timeout, and "
                                  "--compression: each size also runs compressed)")
    g.add_argument("--hosts-netns", type=int, default=0, metavar="N",
                   help="build N hosts from network namespaces (sshd each, links shaped to "
                        "--link-rate), run the psframe job over the ssh launcher and a gloo "
                        "allreduce of the same bytes across them, and compare with the floors")
    g.add_argument("--link-rate", default="1gbit",
                   help="rate of every host's link, each way, as tc spells it (1gbit, 10gbit)")


def worker_hosts(num_workers, num_hosts):
    """Host index of each worker rank (and gloo rank): hosts filled in order, as the launcher
    places workers with ``slots=ceil(n / hosts)``."""
    per_host = math.ceil(num_workers / num_hosts)
    return [r // per_host for r in range(num_workers)]


def server_hosts(num_servers, num_hosts):
    """Host index of each server: round-robin, as the launcher places them."""
    return [s % num_hosts for s in range(num_servers)]


def floors(nbytes, shares, workers, servers):
    """Payload bytes the busiest host link carries each way per round, for one pushpull of a key
    of ``nbytes`` whose fraction ``shares[s]`` lives on server ``s``; ``workers``/``servers``
    give each rank's host. Returns ``{"flat PS": b, "ring": b, "host tier": b}``."""
    hosts = sorted(set(workers))
    n = len(workers)
    out = {"flat PS": 0.0, "ring": 0.0, "host tier": 0.0}
    for a in hosts:
        local = sum(f for f, h in zip(shares, servers) if h == a)
        here = sum(1 for h in workers if h == a)
        flat = here * (1 - local) * nbytes + local * nbytes * (n - here)
        edges = sum(1 for r in range(n) if workers[r] == a and workers[(r + 1) % n] != a)
        ring = edges * 2 * (n - 1) / n * nbytes
        tier = (1 - local) * nbytes + local * nbytes * (len(hosts) - 1)
        for name, b in (("flat PS", flat), ("ring", ring), ("host tier", tier)):
            out[name] = max(out[name], b)
    return out


def crossing(before, after, workers, servers, host=0):
    """Payload bytes ``(out, in)`` of ``host`` between two ``server_stats`` snapshots: pushes
    from its workers to other hosts' servers and its servers' answers to other hosts' workers
    go out; the reverse comes in."""
    out = inc = 0
    for s, (b, a) in enumerate(zip(before, after)):
        pushed = [x - y for x, y in zip(a["bytes_in_by_rank"], b["bytes_in_by_rank"])]
        pulled = [x - y for x, y in zip(a["bytes_out_by_rank"], b["bytes_out_by_rank"])]
        for r, w in enumerate(workers):
            if w == host and servers[s] != host:
                out, inc = out + pushed[r], inc + pulled[r]
            elif w != host and servers[s] == host:
                out, inc = out + pulled[r], inc + pushed[r]
    return out, inc


def _wire(link, rounds):
    """Bytes per round ``(out, in)`` of a host link from a ``[before, after]`` pair."""
    b, a = link
    return (a["sent"] - b["sent"]) / rounds, (a["received"] - b["received"]) / rounds


def run_gloo(ns, hosts, sizes, workers):
    """The gloo allreduce of every size with rank r on host ``workers[r]`` over the shaped
    links; returns ``({nbytes: s}, {nbytes: [before, after] of rank 0's link})``."""
    spec = json.dumps({"sizes": sizes, "rounds": ns.rounds, "warmup": ns.warmup, "link": netns.LINK})
    port = str(free_port())
    commands = [(hosts.exec_prefix(h) + [sys.executable, "-m", "psframe.bench.baselines", spec],
                 dict(os.environ, MASTER_ADDR=hosts.addresses[0], MASTER_PORT=port, RANK=str(r),
                      WORLD_SIZE=str(len(workers)), GLOO_SOCKET_IFNAME=netns.LINK, OMP_NUM_THREADS="1"))
                for r, h in enumerate(workers)]
    out = baselines.run_processes(commands, ns.job_timeout, "gloo allreduce across the namespace hosts")[0]
    lines = {l.split(" ", 1)[0]: json.loads(l.split(" ", 1)[1]) for l in out.splitlines()
             if l.startswith(("GLOO ", "GLOOLINK "))}
    return ({int(k): v for k, v in lines["GLOO"].items()},
            {int(k): v for k, v in lines["GLOOLINK"].items()})


def measure(ns, hosts, sizes, num_workers, num_servers, rate):
    """Every size: the psframe job (one job per size, so the servers hold only that key), then
    the gloo allreduce of all sizes. Returns the report dict."""
    workers = worker_hosts(num_workers, len(hosts.names))
    servers = server_hosts(num_servers, len(hosts.names))
    # token, not the multi-host default CURVE: gloo does not encrypt either, so both move the
    # same plain bytes (docs/operations.md#security gives CURVE's cost)
    launch = ["--launcher", "ssh", "-H", hosts.hostfile, *hosts.launch_args, "--security", "token"]
    tiered = max(workers.count(h) for h in set(workers)) > 1
    rows = []
    for nbytes, kind in [(n, t) for n in sizes for t in ("none", *compression.parse_types(ns.compression))]:
        case = size_case(nbytes, ["pushpull"])
        spec = {"rounds": ns.rounds, "warmup": ns.warmup, "optimizer": None, "cases": [case],
                "link": netns.LINK,
                "compression": compression.config_of(kind, ns.threshold) if kind != "none" else None}
        rounds = rounds_for(nbytes, ns.rounds)

        def run(tier):
            _progress(f"psframe job: {format_size(nbytes)} pushpull{'' if kind == 'none' else ', ' + kind}, "
                      f"{num_workers} workers + {num_servers} servers over ssh, "
                      f"{'through the host tier' if tier else 'flat'}")
            results = run_job(num_workers, num_servers, KIND, spec, ns, prefix=hosts.exec_prefix(0),
                              launch_args=launch, host_tier=tier)
            before, after = results[0]["link"][case["label"]]
            payload = crossing(before["servers"], after["servers"], workers, servers)
            return results, (before, after), [b / rounds for b in payload]

        results, (before, after), payload = run(tiered)
        held = [s["held_bytes"] for s in after["servers"]]
        row = {"nbytes": nbytes, "rounds": rounds, "compression": kind,
               "psframe": report.round_medians(results, case["label"])["pushpull"],
               "psframe_wire": _wire([before, after], rounds),
               "psframe_payload": payload,
               "floors": floors(nbytes, [h / sum(held) for h in held], workers, servers)}
        if tiered and kind == "none":      # the same job flat, to show what the tier saves
            flat, link, row["flat_payload"] = run(False)
            row["flat"] = report.round_medians(flat, case["label"])["pushpull"]
            row["flat_wire"] = _wire(link, rounds)
        rows.append(row)
    if not ns.no_gloo and baselines.torch_available():
        _progress(f"gloo allreduce: {num_workers} ranks")
        times, links = run_gloo(ns, hosts, sizes, workers)
        for row in rows:
            row["gloo"] = times[row["nbytes"]]
            row["gloo_wire"] = _wire(links[row["nbytes"]], row["rounds"])
    return {"hosts": len(hosts.names), "namespaces": hosts.names, "rate_bits": rate,
            "num_workers": num_workers, "num_servers": num_servers, "worker_hosts": workers,
            "server_hosts": servers, "rounds": ns.rounds, "warmup": ns.warmup, "rows": rows}


def _progress(text):
    print(f"psframe-bench: {text}", file=sys.stderr, flush=True)


def _rate_text(bits):
    for unit, scale in (("Tbit/s", 1e12), ("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} bit/s"


def text(rep):
    """The printed report: one block per size, the floors' legend, and one summary line each."""
    rate = rep["rate_bits"]
    per_host = max(rep["worker_hosts"].count(h) for h in set(rep["worker_hosts"]))
    lines = [f"multi-host: {rep['hosts']} namespace hosts ({', '.join(rep['namespaces'])}), every "
             f"host link shaped to {_rate_text(rate)} each way (tc tbf); psframe: "
             f"{rep['num_workers']} workers ({per_host} per host) + {rep['num_servers']} servers over "
             f"the ssh launcher; gloo: {rep['num_workers']} ranks placed the same way; medians of the "
             f"slowest rank over the timed rounds (after {rep['warmup']} warm-up)", ""]
    summary, uncompressed = [], {}
    for row in rep["rows"]:
        size, gloo = format_size(row["nbytes"]), row.get("gloo")
        kind = row.get("compression", "none")
        if kind != "none":       # a compressed run of the size above: under its psframe row
            t, wire = row["psframe"], row["psframe_wire"]
            t0, at = uncompressed[row["nbytes"]]
            bits = max(wire) * 8 / t
            lines.insert(at, f"  {'psframe, ' + kind:<24} {t * 1e3:9.1f}   {wire[0] / MB:8.1f} / "
                             f"{wire[1] / MB:<8.1f}            {bits / 1e9:5.2f}   {100 * bits / rate:5.0f}%"
                             f"   {t / t0:.2f}x uncompressed")
            uncompressed[row["nbytes"]] = (t0, at + 1)
            summary.append(f"multi-host {size} pushpull, {rep['hosts']} hosts at {_rate_text(rate)}: "
                           f"{kind} / uncompressed {t / t0:.2f}x ({t * 1e3:.0f} ms vs {t0 * 1e3:.0f} ms; "
                           f"host link out {wire[0] / MB:.1f} MB/round)")
            continue
        lines.append(f"{size} pushpull, {row['rounds']} rounds:     ms/round   host 1 link MB/round "
                     f"out / in   Gbit/s  of link   vs gloo")
        uncompressed[row["nbytes"]] = (row["psframe"], len(lines) + 1)   # after psframe's line
        tier = "flat" in row      # psframe ran through the host tier, and flat to compare
        runs = [("psframe, host tier" if tier else "psframe (ssh launcher)", row["psframe"],
                 row["psframe_wire"])]
        if tier:
            runs.append(("psframe, flat", row["flat"], row["flat_wire"]))
        for name, t, wire in (*runs, ("gloo allreduce", gloo, row.get("gloo_wire"))):
            if t is None:
                lines.append(f"  {name:<24}  skipped (--no-gloo, or torch is not installed)")
                continue
            vs = f"{t / gloo:.2f}x" if gloo else "-"
            bits = max(wire) * 8 / t
            lines.append(f"  {name:<24} {t * 1e3:9.1f}   {wire[0] / MB:8.1f} / {wire[1] / MB:<8.1f}"
                         f"            {bits / 1e9:5.2f}   {100 * bits / rate:5.0f}%   {vs:>7}")
        out, inc = row["psframe_payload"]
        lines.append(f"  psframe payload between hosts (server_stats): {out / MB:.1f} out / "
                     f"{inc / MB:.1f} in MB/round")
        fl = row["floors"]
        for name, who, t in (("flat PS", "psframe flat" if tier else "psframe",
                              row["flat"] if tier else row["psframe"]),
                             ("ring", "gloo", gloo),
                             ("host tier", "psframe" if tier else None, row["psframe"] if tier else None)):
            floor = fl[name] * 8 / rate
            note = (f"{who} at {t / floor:.2f}x this floor" if t else
                    f"{floor / gloo:.2f}x gloo's time" if gloo and who is None else "")
            lines.append(f"  floor {name:<10} {fl[name] / MB:8.1f} MB {floor * 1e3:9.1f} ms   {note}")
        ratio = f"psframe/gloo {row['psframe'] / gloo:.2f}x" if gloo else "psframe/gloo n/a (no gloo run)"
        if tier:
            ratio = f"host tier / flat {row['psframe'] / row['flat']:.2f}x, {ratio}"
        summary.append(f"multi-host {size} pushpull, {rep['hosts']} hosts at {_rate_text(rate)}: {ratio}; "
                       f"psframe {row['psframe'] * 1e3:.0f} ms, floors flat PS "
                       f"{fl['flat PS'] * 8 / rate * 1e3:.0f} ms, ring {fl['ring'] * 8 / rate * 1e3:.0f} ms, "
                       f"host tier {fl['host tier'] * 8 / rate * 1e3:.0f} ms")
        lines.append("")
    return "\n".join(lines + [FLOORS_LEGEND, ""] + summary)


def _config(ns):
    """``(rate, sizes, hosts, workers, servers)`` from the flags.

    Raises:
        ValueError: a flag is out of range, naming it.
    """
    rate = netns.parse_rate(ns.link_rate)
    sizes = parse_sizes(ns.allreduce_sizes)
    if ns.hosts_netns < 2:
        raise ValueError(f"--hosts-netns {ns.hosts_netns}: need at least 2 hosts")
    if not sizes:
        raise ValueError("--allreduce-sizes is empty: give the key sizes to move between hosts")
    num_workers = ns.num_workers or 2 * ns.hosts_netns
    num_servers = ns.num_servers or ns.hosts_netns
    if num_workers < ns.hosts_netns:
        raise ValueError(f"-n {num_workers}: need at least one worker per host ({ns.hosts_netns})")
    return rate, sizes, ns.hosts_netns, num_workers, num_servers


def main(ns):
    """Run the multi-host mode; returns the exit code (2: cannot run here, 1: failed,
    128+N: stopped by signal N, after cleaning up)."""
    try:
        rate, sizes, num_hosts, num_workers, num_servers = _config(ns)
    except ValueError as exc:
        print(f"psframe-bench: error: {exc}", file=sys.stderr)
        return 2
    missing = netns.missing_requirements()
    if missing:
        print("psframe-bench: error: --hosts-netns builds network namespaces and needs "
              + "; ".join(missing), file=sys.stderr)
        return 2
    # sshd (and with it every session) ends after its lifetime even if this process is killed
    # by SIGKILL; give it every job's timeout
    lifetime = ns.job_timeout * (len(sizes) + 1) + 300
    hosts = netns.NetnsHosts(num_hosts, rate, slots=math.ceil(num_workers / num_hosts),
                             lifetime=lifetime, prefix="psb")
    # SIGINT too: a shell starts background jobs with it ignored, and Python keeps that
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        hosts.up()
        _progress(f"hosts up: {', '.join(hosts.names)} ({_rate_text(rate)} links)")
        rep = measure(ns, hosts, sizes, num_workers, num_servers, rate)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)   # a bare KeyboardInterrupt: Ctrl-C
        _progress(f"stopped by {signal.Signals(signum).name}; removing the namespace hosts")
        return 128 + signum
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"psframe-bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)     # the cleanup runs to its end
        hosts.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(text(rep))
    if ns.json:
        report.write_json(ns.json, rep)
    return 0
