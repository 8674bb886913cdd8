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

from ..server.heap import keep_freed_memory
from ..transport import addresses
from .cases import rounds_for
from .netns import interface_bytes

logger = logging.getLogger(__name__)

ECHO_TIMEOUT_MS = 30000


def _echo_main(addresses_json):
    """The echo process: a ROUTER bound to every address, sending each message straight back
    until told to stop, its parent is gone, or nothing came for ``ECHO_TIMEOUT_MS`` (run as
    ``python -m psframe.bench.baselines echo ADDRESSES``)."""
    keep_freed_memory()      # as psframe's servers do: the baseline gets the same warm heap
    ctx = zmq.Context()
    sock = _echo_socket(ctx, json.loads(addresses_json))
    parent = os.getppid()
    print("READY", flush=True)
    try:
        _serve_echo(sock, lambda: os.getppid() != parent)
    finally:
        ctx.destroy(0)


def _echo_socket(ctx, bind_to):
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    for address in bind_to:
        sock.bind(address)
    return sock


def _serve_echo(sock, stopped):
    """Send every message straight back (zero-copy both ways) until an empty message comes,
    ``stopped()`` turns true, or nothing came for ``ECHO_TIMEOUT_MS``."""
    idle = 0
    while idle < ECHO_TIMEOUT_MS and not stopped():
        if not sock.poll(100):
            idle += 100
            continue
        idle = 0
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 2 and len(frames[1]) == 0:
            return
        sock.send_multipart(frames, copy=False)


class ZmqEcho:
    """Raw pyzmq DEALER -> ROUTER round trips on this machine, to an echo in its own process
    and to an echo thread of this process (sharing its zmq context, the way a 100 MiB payload
    goes fastest here), over every transport psframe may use: TCP on 127.0.0.1, and with
    ``transport="ipc"`` also an abstract unix socket. ``roundtrips`` times every way, so the
    bench can take the best raw figure. Use as a context manager."""

    def __init__(self, transport="tcp"):
        names = ["tcp"] + (["ipc"] if transport == "ipc" and addresses.new_local() else [])
        new = {"tcp": lambda: f"tcp://127.0.0.1:{addresses.free_port()}", "ipc": addresses.new_local}
        self.addresses = {name: new[name]() for name in names}
        thread_addresses = {f"{name} echo-thread": new[name]() for name in names}
        self.proc = subprocess.Popen([sys.executable, "-m", "psframe.bench.baselines", "echo",
                                      json.dumps(list(self.addresses.values()))],
                                     stdout=subprocess.PIPE, text=True)
        self.ctx = zmq.Context()
        self.socks, self.stop, self.thread = {}, threading.Event(), None
        try:
            echo = _echo_socket(self.ctx, thread_addresses.values())
            self.thread = threading.Thread(target=_serve_echo, args=(echo, self.stop.is_set),
                                           name="psframe-bench-echo", daemon=True)
            self.thread.start()
            if self.proc.stdout.readline().strip() != "READY":
                raise RuntimeError(f"the pyzmq echo process failed (exit {self.proc.wait(10)})")
            for name, address in {**self.addresses, **thread_addresses}.items():
                sock = self.socks[name] = self.ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVTIMEO, ECHO_TIMEOUT_MS)
                sock.setsockopt(zmq.SNDTIMEO, ECHO_TIMEOUT_MS)
                sock.connect(address)
        except BaseException:
            self.close()
            raise

    def roundtrips(self, payload, landing, chunk):
        """Seconds to send ``payload`` (uint8) and receive it back into ``landing``, per
        transport, as one frame and (when bigger) as frames of ``chunk`` bytes: ``{"tcp": s,
        "tcp_chunked": s, ...}``. Zero-copy sends, no allocation on receive."""
        ways = [("", 0)] + ([("_chunked", chunk)] if payload.nbytes > chunk else [])
        return {name + suffix: _roundtrip(sock, payload, landing, c)
                for name, sock in self.socks.items() for suffix, c in ways}

    def close(self):
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)
        for sock in self.socks.values():
            sock.close(0)
        if self.proc.poll() is None:
            try:
                stop = self.ctx.socket(zmq.DEALER)
                stop.setsockopt(zmq.LINGER, 1000)
                stop.connect(self.addresses["tcp"])
                stop.send(b"")
                stop.close()
                self.proc.wait(5)
            except (zmq.ZMQError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def zmq_roundtrips(sizes, transport, rounds, warmup, chunk):
    """Median seconds of raw pyzmq round trips of each size in ``sizes`` (``ZmqEcho``):
    ``{nbytes: {way: s}}`` (ways as ``ZmqEcho.roundtrips``). Each size runs its own warm-up
    and rounds: a size measured between rounds of 100 MiB ran up to three times slower."""
    keep_freed_memory()      # the receiving side too (this is the bench's own process)
    out = {}
    with ZmqEcho(transport) as echo:
        for n in sizes:
            payload, landing, samples = np.ones(n, np.uint8), np.zeros(n, np.uint8), {}
            for r in range(warmup + rounds_for(n, rounds)):
                for way, t in echo.roundtrips(payload, landing, chunk).items():
                    if r >= warmup:
                        samples.setdefault(way, []).append(t)
            out[n] = {way: statistics.median(ts) for way, ts in samples.items()}
    return out


def _roundtrip(sock, payload, landing, chunk=0):
    t0 = time.perf_counter()
    n = payload.nbytes
    if chunk and n > chunk:
        sock.send_multipart([payload[i:i + chunk] for i in range(0, n, chunk)], copy=False)
        for i in range(0, n, chunk):
            sock.recv_into(landing[i:i + chunk])
    else:
        sock.send(payload, copy=n < 65536)
        sock.recv_into(landing)
    return time.perf_counter() - t0


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
    with ``num_processes`` processes on 127.0.0.1, over ``rounds_for`` rounds as psframe's case
    of that size. Returns {nbytes: seconds} (rank 0's view).

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
    result, link, iface = {}, {}, spec.get("link")
    try:
        for nbytes in spec["sizes"]:
            t = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
            samples = []
            for r in range(spec["warmup"] + rounds_for(nbytes, spec["rounds"])):
                if iface and r == spec["warmup"]:
                    before = _link_bytes(dist, iface)
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(t)
                samples.append(time.perf_counter() - t0)
            if iface:
                link[nbytes] = [before, _link_bytes(dist, iface)]
            result[nbytes] = statistics.median(samples[spec["warmup"]:])
    finally:
        dist.destroy_process_group()
    if int(os.environ["RANK"]) == 0:
        print("GLOO " + json.dumps(result), flush=True)
        if iface:
            print("GLOOLINK " + json.dumps(link), flush=True)


def _link_bytes(dist, iface):
    """Bytes this rank's link received and sent, once every rank got here (multi-host bench)."""
    dist.barrier()
    received, sent = interface_bytes(iface)
    return {"received": received, "sent": sent}


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        _echo_main(sys.argv[2])
    else:
        _gloo_main(sys.argv[1])
