"""Raw pyzmq moving the traffic of a parameter-server round, without any psframe code.

N worker processes and S server processes move exactly the bytes of a psframe ``pushpull`` of
one key sliced over the servers: each worker sends its slice for server ``s`` in frames of
``chunk`` bytes, and each server sends every frame straight back as it arrives (zero-copy; no
merge, no bookkeeping). A worker's round ends when all of its bytes are back in its landing
buffer. It is not a strict floor (psframe's servers send bigger frames and keep their heap
warm, which plain pyzmq here does not), but the gap between it and a gloo allreduce is the price
of the parameter-server traffic pattern itself (every byte to a server and back), and the gap
between psframe and it is what psframe's own work costs.

Run as ``python -m psframe.bench.raw_traffic SPEC``: the parent (``measure``) starts the servers
and workers as subprocesses, so nothing is pickled and every process is reaped.
"""
import json
import os
import statistics
import sys
import time

import numpy as np
import zmq

from ..transport import addresses
from .baselines import run_processes
from .cases import rounds_for

TIMEOUT_MS = 30000


def measure(sizes, num_workers, num_servers, transport="tcp", rounds=10, warmup=2, chunk=1 << 20,
            timeout=300):
    """Median over rounds of the slowest worker's round, in seconds, per size: ``{nbytes: s}``
    (as many rounds as psframe's own case of that size: ``rounds_for``).

    Raises:
        RuntimeError: a process failed or did not finish within ``timeout`` seconds.
    """
    servers = [_address(transport) for _ in range(num_servers)]
    spec = {"sizes": list(sizes), "servers": servers, "workers": num_workers, "rounds": rounds,
            "warmup": warmup, "chunk": chunk, "go": _address("ipc")}   # worker 0's round barrier
    roles = [("server", i) for i in range(num_servers)] + [("worker", r) for r in range(num_workers)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = run_processes([([sys.executable, "-m", "psframe.bench.raw_traffic",
                            json.dumps(dict(spec, role=role, index=i))], env) for role, i in roles],
                         timeout, "raw pyzmq traffic baseline")
    per_worker = [json.loads(out.split("FLOOR ", 1)[1]) for out in outs[num_servers:]]
    return {n: statistics.median(max(w[str(n)][i] for w in per_worker) for i in range(rounds_for(n, rounds)))
            for n in sizes}


def _address(transport):
    if transport == "ipc":
        local = addresses.new_local()
        if local is not None:
            return local
    return f"tcp://127.0.0.1:{addresses.free_port()}"


def _server(spec, ctx):
    """Echo every frame back to its sender until every worker said it is done."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(spec["servers"][spec["index"]])
    done = 0
    while done < spec["workers"]:
        if not sock.poll(TIMEOUT_MS):
            raise TimeoutError("no worker traffic for 30 s")
        frames = sock.recv_multipart(copy=False)
        if len(frames[1]) == 0:
            done += 1
        else:
            sock.send_multipart(frames, copy=False)


def _worker(spec, ctx):
    servers = []
    for address in spec["servers"]:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
        s.connect(address)
        servers.append(s)
    leader = spec["index"] == 0
    pace = ctx.socket(zmq.ROUTER if leader else zmq.DEALER)
    pace.setsockopt(zmq.LINGER, 0)
    pace.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    (pace.bind if leader else pace.connect)(spec["go"])
    chunk, result = spec["chunk"], {}
    for nbytes in spec["sizes"]:
        payload, landing = np.ones(nbytes, np.uint8), np.zeros(nbytes, np.uint8)
        bounds = np.linspace(0, nbytes, len(servers) + 1).astype(np.int64)
        pieces = [(s, i) for k, s in enumerate(servers)
                  for i in range(int(bounds[k]), int(bounds[k + 1]), chunk)]
        stops = {i: min(i + chunk, int(bounds[k + 1])) for k in range(len(servers))
                 for i in range(int(bounds[k]), int(bounds[k + 1]), chunk)}
        samples = []
        for r in range(spec["warmup"] + rounds_for(nbytes, spec["rounds"])):
            _barrier(pace, leader, spec["workers"])
            t0 = time.perf_counter()
            for s, i in pieces:
                s.send(payload[i:stops[i]], copy=False)
            for s, i in pieces:       # each server answers in order
                s.recv_into(landing[i:stops[i]])
            samples.append(time.perf_counter() - t0)
        result[nbytes] = samples[spec["warmup"]:]
    for s in servers:
        s.send(b"")
    print("FLOOR " + json.dumps(result), flush=True)


def _barrier(sock, leader, workers):
    """Start a round together: the others say ready to worker 0, which answers them all."""
    if leader:
        peers = [sock.recv_multipart()[0] for _ in range(workers - 1)]
        for peer in peers:
            sock.send_multipart([peer, b"go"])
    else:
        sock.send(b"ready")
        sock.recv()


def main(arg):
    spec = json.loads(arg)
    ctx = zmq.Context()
    try:
        (_server if spec["role"] == "server" else _worker)(spec, ctx)
    finally:
        ctx.destroy(0)


if __name__ == "__main__":
    main(sys.argv[1])
