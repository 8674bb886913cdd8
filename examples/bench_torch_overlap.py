"""Step time of psframe.torch (overlap on and off) against PyTorch DDP (gloo), in one run.

The model's backward spends a fixed device-like time per layer (a sleep in a custom autograd
Function: no host CPU, as a GPU kernel would), so what decides the step time is how much of the
communication hides under backward. ``--model mlp``: 8 square layers, about 100 MB of float32
gradients; ``--model resnet50``: the 161 parameter tensors of ResNet-50 (25.6M floats, 102 MB),
one sleep per tensor. The three modes run interleaved, ``--rounds`` times each, 2 workers::

    python examples/bench_torch_overlap.py --rounds 3 --steps 8
    sudo python examples/bench_torch_overlap.py --model resnet50 --sleep-ms 0.5 \
        --hosts-netns 2 --link-rate 10gbit

The first runs both workers on 127.0.0.1 (flat: every worker talks to the servers itself, as
DDP's ranks talk to each other; ``--host-tier``: through the host's aggregator instead). The
second puts one worker on each of 2 network-namespace hosts whose links are shaped with tc
(``psframe.bench.netns``, root only), psframe with one server per host over the ssh launcher
and DDP with one rank per host. Each prints every mode's median step time and the ratios
psframe/DDP and overlap-on/overlap-off. (Run one mode's worker alone with ``--worker MODE``,
under psframe-launch or torchrun.)
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

LAYERS, WIDTH = 8, 1792          # 8 x 1792 x 1792 float32 weights: 103 MB of gradients


def build(model, sleep_ms):
    """``(module, input)``: ``model`` is "mlp" or "resnet50" (see the module docstring)."""
    import torch
    from torch import nn

    class Sleep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            time.sleep(sleep_ms / 1000)
            return g

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS))

        def forward(self, x):
            for layer in self.layers:
                x = Sleep.apply(torch.tanh(layer(x)))
            return x

    class Shapes(nn.Module):
        """ResNet-50's parameter tensors; backward meets them last layer first, as in the
        real network, and gives each a dense gradient."""

        def __init__(self):
            super().__init__()
            from psframe.bench.cases import resnet50_shapes
            torch.manual_seed(0)
            self.params = nn.ParameterList(nn.Parameter(torch.randn(s) * 0.01) for s in resnet50_shapes())

        def forward(self, x):
            for p in self.params:
                x = Sleep.apply(x + p.sum())
            return x

    if model == "resnet50":
        return Shapes(), torch.zeros(())
    return Model(), torch.randn(4, WIDTH)


def worker(mode, steps, sleep_ms, model_name):
    """Train ``steps`` steps in ``mode``; print ``STEP_TIMES [...]`` (seconds) on rank 0."""
    import torch
    torch.set_num_threads(1)
    model, x = build(model_name, sleep_ms)
    if mode == "ddp":
        import datetime
        import torch.distributed as dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        times = _timed_steps(steps, dist.barrier, ddp, x, torch.optim.SGD(ddp.parameters(), lr=1e-4))
        rank = dist.get_rank()
        dist.destroy_process_group()
    else:
        import psframe
        import psframe.torch
        with psframe.create() as kv:
            opt = psframe.torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1e-4), kv,
                                                     overlap=mode == "psframe")
            times = _timed_steps(steps, kv.barrier, model, x, opt)
            rank = kv.rank
            kv.barrier()
    if rank == 0:
        print("STEP_TIMES " + json.dumps(times), flush=True)


def _timed_steps(steps, barrier, model, x, opt):
    """Seconds of each training step, every one started together (after ``barrier()``)."""
    times = []
    for _ in range(steps):
        barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def run_mode(mode, ns, hosts=None):
    """One job of ``mode`` (2 workers); returns its step times after the first (warm-up) step."""
    me = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--steps", str(ns.steps),
          "--sleep-ms", str(ns.sleep_ms), "--model", ns.model]
    if hosts is not None:
        return _run_on_hosts(mode, ns, hosts, me)
    if mode == "ddp":
        from psframe.transport.addresses import free_port
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *me[1:]]
    else:
        launch = os.path.join(os.path.dirname(sys.executable), "psframe-launch")
        cmd = [launch, "-n", "2", "-s", str(ns.servers), "--host-tier" if ns.host_tier else "--no-host-tier",
               *me[1:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        text = proc.communicate(timeout=ns.timeout)[0]
    except subprocess.TimeoutExpired:
        text = f"did not finish within {ns.timeout:g}s (--timeout)"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)     # the whole job: launcher or torchrun and workers
        proc.wait()
    return _step_times(mode, proc.returncode, text)


def _step_times(mode, code, text):
    lines = [l for l in text.splitlines() if "STEP_TIMES " in l]
    if code != 0 or not lines:
        raise RuntimeError(f"{mode} failed (exit {code}):\n{text[-3000:]}")
    return json.loads(lines[-1].split("STEP_TIMES ", 1)[1])[1:]


def _run_on_hosts(mode, ns, hosts, me):
    """``mode`` with ``--per-host`` workers on each namespace host: psframe over the ssh
    launcher (one server per host, token authentication: gloo does not encrypt either; several
    workers of a host go through its host tier), DDP with the same ranks per host."""
    from psframe.bench import baselines, netns
    from psframe.transport.addresses import free_port
    ranks = 2 * ns.per_host
    if mode == "ddp":
        env = dict(os.environ, MASTER_ADDR=hosts.addresses[0], MASTER_PORT=str(free_port()),
                   WORLD_SIZE=str(ranks), GLOO_SOCKET_IFNAME=netns.LINK, OMP_NUM_THREADS="1")
        outs = baselines.run_processes([(hosts.exec_prefix(r // ns.per_host) + me, dict(env, RANK=str(r)))
                                        for r in range(ranks)], ns.timeout, "DDP across the namespace hosts")
        return _step_times(mode, 0, outs[0])
    cmd = [*hosts.exec_prefix(0), sys.executable, "-m", "psframe_launcher", "--launcher", "ssh",
           "-H", hosts.hostfile, *hosts.launch_args, "--security", "token",
           "-n", str(ranks), "-s", "2", *me[1:]]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=ns.timeout)
    return _step_times(mode, proc.returncode, proc.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three modes")
    p.add_argument("--steps", type=int, default=8, help="steps per job (the first is not timed)")
    p.add_argument("--sleep-ms", type=float, default=20, help="backward time per layer")
    p.add_argument("-s", dest="servers", type=int, default=1, help="psframe servers")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--model", choices=("mlp", "resnet50"), default="mlp")
    p.add_argument("--hosts-netns", type=int, default=0, choices=(0, 2),
                   help="2: one worker on each of 2 network-namespace hosts (root only)")
    p.add_argument("--link-rate", default="10gbit", help="with --hosts-netns: each host link's rate (tc)")
    p.add_argument("--host-tier", action="store_true",
                   help="on 127.0.0.1: the two workers go through the host tier (default: flat, "
                        "each worker to the servers, as DDP's ranks talk to each other)")
    p.add_argument("--per-host", type=int, default=1,
                   help="with --hosts-netns: workers (DDP ranks) per host; psframe sums them "
                        "through the host tier")
    p.add_argument("--worker", choices=("psframe", "psframe-off", "ddp"), help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.worker:
        return worker(ns.worker, ns.steps, ns.sleep_ms, ns.model)
    if ns.hosts_netns:
        from psframe.bench import netns
        missing = netns.missing_requirements()
        if missing:
            sys.exit("--hosts-netns needs " + "; ".join(missing))
        with netns.NetnsHosts(2, netns.parse_rate(ns.link_rate), slots=ns.per_host,
                              lifetime=ns.timeout * 3 * ns.rounds + 300, prefix="pto") as hosts:
            med = _measure(ns, hosts)
        where = f"2 namespace hosts, {ns.link_rate} links, {ns.per_host} worker(s) each"
    else:
        med = _measure(ns, None)
        where = "2 workers on 127.0.0.1"
    tensors, floats = (161, 25_557_032) if ns.model == "resnet50" else (LAYERS, LAYERS * WIDTH * WIDTH)
    print(f"{ns.model}: {tensors} tensors, {floats * 4 / 1e6:.0f} MB of gradients, backward "
          f"{tensors * ns.sleep_ms:g} ms of sleep; {where}; median step over {ns.rounds} rounds:")
    for m, v in med.items():
        print(f"  {m:12s} {v * 1e3:7.1f} ms")
    print(f"  psframe / ddp         = {med['psframe'] / med['ddp']:.2f}x")
    print(f"  psframe / psframe-off = {med['psframe'] / med['psframe-off']:.2f}x")


def _measure(ns, hosts):
    samples = {"psframe": [], "psframe-off": [], "ddp": []}
    for r in range(ns.rounds):
        for mode in samples:
            t = run_mode(mode, ns, hosts)
            samples[mode].extend(t)
            print(f"round {r}: {mode:12s} median step {statistics.median(t) * 1e3:7.1f} ms", flush=True)
    return {m: statistics.median(v) for m, v in samples.items()}


if __name__ == "__main__":
    main()
