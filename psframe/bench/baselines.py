"""Baselines measured in the same run as psframe: raw pyzmq round trips, numpy copy bandwidth,
and a torch.distributed gloo allreduce (when torch is installed). All on 127.0.0.1."""
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import zmq

from ..transport import addresses

logger = logging.getLogger(__name__)

ECHO_TIMEOUT_MS = 30000


def _echo(ctx, address, ready, stop):
    """ROUTER that sends every message straight back (zero-copy both ways)."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    ready.set()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    try:
        while not stop.is_set():
            if poller.poll(100):
                sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
    finally:
        sock.close(0)


class ZmqEcho:
    """A raw pyzmq DEALER -> ROUTER echo on 127.0.0.1, or over an abstract unix socket with
    ``transport="ipc"`` (the echo runs in a thread: zmq's I/O threads move the bytes, so the GIL
    is not in the way). Use as a context manager."""

    def __init__(self, transport="tcp"):
        self.ctx = zmq.Context()
        self.address = (transport == "ipc" and addresses.new_local()) or f"tcp://127.0.0.1:{addresses.free_port()}"
        ready, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=_echo, args=(self.ctx, self.address, ready, self.stop),
                                       name="psframe-bench-echo", daemon=True)
        self.thread.start()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, ECHO_TIMEOUT_MS)
        self.sock.setsockopt(zmq.SNDTIMEO, ECHO_TIMEOUT_MS)
        if not ready.wait(10):
            self.close()
            raise TimeoutError("the pyzmq echo socket did not start within 10 s")
        self.sock.connect(self.address)

    def roundtrip(self, payload, landing, chunk=0):
        """Seconds to send ``payload`` (uint8) and receive it back into ``landing``: as one
        frame, or as frames of ``chunk`` bytes. Zero-copy sends, no allocation on receive."""
        t0 = time.perf_counter()
        n = payload.nbytes
        if chunk and n > chunk:
            self.sock.send_multipart([payload[i:i + chunk] for i in range(0, n, chunk)], copy=False)
            for i in range(0, n, chunk):
                self.sock.recv_into(landing[i:i + chunk])
        else:
            self.sock.send(payload, copy=n < 65536)
            self.sock.recv_into(landing)
        return time.perf_counter() - t0

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def numpy_copy(nbytes, rounds):
    """Median seconds of ``np.copyto`` between two warm buffers of ``nbytes``."""
    a = np.ones(nbytes, dtype=np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.copyto(b, a)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def torch_available():
    try:
        import torch.distributed as dist  # noqa: F401
        return dist.is_available()
    except Exception:
        return False


def gloo_allreduce(sizes, num_processes=2, rounds=10, warmup=2, timeout=300):
    """Median seconds of a gloo allreduce of float32 tensors of each byte size in ``sizes``,
    with ``num_processes`` processes on 127.0.0.1. Returns {nbytes: seconds} (rank 0's view).

    Raises:
        RuntimeError: a process failed or did not finish within ``timeout`` seconds.
    """
    port = addresses.free_port()
    arg = json.dumps({"sizes": list(sizes), "rounds": rounds, "warmup": warmup})
    outs = run_processes(
        [([sys.executable, "-m", "psframe.bench.baselines", arg],
          dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
               WORLD_SIZE=str(num_processes), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1"))
         for rank in range(num_processes)], timeout, "gloo baseline")
    line = [l for l in outs[0].splitlines() if l.startswith("GLOO ")][-1]
    return {int(k): v for k, v in json.loads(line[5:]).items()}


def run_processes(commands, timeout, what):
    """Run every ``(argv, env)`` as a subprocess at once, wait for all and reap them; returns
    their standard outputs.

    Raises:
        RuntimeError: naming ``what``, if one failed or they ran past ``timeout`` seconds.
    """
    procs = []
    try:
        for argv, env in commands:
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        outs = [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} did not finish within {timeout:g}s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {p.returncode}): {err.decode()[-2000:]}")
    return [out.decode() for out, _ in outs]


def _gloo_main(arg):
    """One rank of the gloo baseline (run as ``python -m psframe.bench.baselines SPEC``)."""
    import datetime

    import torch
    import torch.distributed as dist
    spec = json.loads(arg)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    result = {}
    try:
        for nbytes in spec["sizes"]:
            t = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
            samples = []
            for _ in range(spec["warmup"] + spec["rounds"]):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(t)
                samples.append(time.perf_counter() - t0)
            result[nbytes] = statistics.median(samples[spec["warmup"]:])
    finally:
        dist.destroy_process_group()
    if int(os.environ["RANK"]) == 0:
        print("GLOO " + json.dumps(result), flush=True)


if __name__ == "__main__":
    _gloo_main(sys.argv[1])
