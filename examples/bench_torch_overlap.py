"""Step time of psframe.torch (overlap on and off) against PyTorch DDP (gloo), in one run.

The model's backward spends a fixed device-like time per layer (a sleep in a custom autograd
Function: no host CPU, as a GPU kernel would) and holds about 100 MB of float32 gradients, so
what decides the step time is how much of the communication hides under backward. The three
modes run interleaved, ``--rounds`` times each, 2 workers on 127.0.0.1::

    python examples/bench_torch_overlap.py --rounds 3 --steps 8

prints each mode's median step time and the ratios psframe/DDP and overlap-on/overlap-off.
(Run one mode's worker alone with ``--worker MODE``, under psframe-launch or torchrun.)
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


def build(sleep_ms):
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

    return Model()


def worker(mode, steps, sleep_ms, batch=4):
    """Train ``steps`` steps in ``mode``; print ``STEP_TIMES [...]`` (seconds) on rank 0."""
    import torch
    torch.set_num_threads(1)
    model = build(sleep_ms)
    x = torch.randn(batch, WIDTH)
    times = []
    if mode == "ddp":
        import datetime
        import torch.distributed as dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-4)
        rank = dist.get_rank()
        for _ in range(steps):
            dist.barrier()
            t0 = time.perf_counter()
            opt.zero_grad()
            ddp(x).sum().backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        dist.destroy_process_group()
    else:
        import psframe
        import psframe.torch
        with psframe.create() as kv:
            opt = psframe.torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1e-4), kv,
                                                     overlap=mode == "psframe")
            rank = kv.rank
            for _ in range(steps):
                kv.barrier()
                t0 = time.perf_counter()
                opt.zero_grad()
                model(x).sum().backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            kv.barrier()
    if rank == 0:
        print("STEP_TIMES " + json.dumps(times), flush=True)


def run_mode(mode, ns):
    """One job of ``mode`` (2 workers); returns its step times after the first (warm-up) step."""
    me = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--steps", str(ns.steps),
          "--sleep-ms", str(ns.sleep_ms)]
    if mode == "ddp":
        from psframe.transport.addresses import free_port
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *me[1:]]
    else:
        launch = os.path.join(os.path.dirname(sys.executable), "psframe-launch")
        # the flat path: through the host tier a push is answered before it returns, so
        # psframe.torch could not overlap it with backward
        cmd = [launch, "-n", "2", "-s", str(ns.servers), "--no-host-tier", *me[1:]]
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
    lines = [l for l in text.splitlines() if "STEP_TIMES " in l]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed (exit {proc.returncode}):\n{text[-3000:]}")
    return json.loads(lines[-1].split("STEP_TIMES ", 1)[1])[1:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three modes")
    p.add_argument("--steps", type=int, default=8, help="steps per job (the first is not timed)")
    p.add_argument("--sleep-ms", type=float, default=20, help="backward time per layer")
    p.add_argument("-s", dest="servers", type=int, default=1, help="psframe servers")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--worker", choices=("psframe", "psframe-off", "ddp"), help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.worker:
        return worker(ns.worker, ns.steps, ns.sleep_ms)
    samples = {"psframe": [], "psframe-off": [], "ddp": []}
    for r in range(ns.rounds):
        for mode in samples:
            t = run_mode(mode, ns)
            samples[mode].extend(t)
            print(f"round {r}: {mode:12s} median step {statistics.median(t) * 1e3:7.1f} ms", flush=True)
    med = {m: statistics.median(v) for m, v in samples.items()}
    print(f"{LAYERS} layers, {LAYERS * WIDTH * WIDTH * 4 / 1e6:.0f} MB of gradients, backward "
          f"{LAYERS * ns.sleep_ms:g} ms of sleep; median step over {ns.rounds} rounds:")
    for m, v in med.items():
        print(f"  {m:12s} {v * 1e3:7.1f} ms")
    print(f"  psframe / ddp         = {med['psframe'] / med['ddp']:.2f}x")
    print(f"  psframe / psframe-off = {med['psframe'] / med['psframe-off']:.2f}x")


if __name__ == "__main__":
    main()
