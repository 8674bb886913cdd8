"""Worker script for failure cases of the core, chosen by argv[1]; prints RESULT {json}."""
import json
import os
import signal
import sys

import numpy as np

import psframe


@psframe.optim.register
class Exploding(psframe.optim.Optimizer):
    """An optimizer whose update raises (servers import this file: --optimizer-module)."""
    def step(self, key, weight, grad, state, lr, t):
        raise FloatingPointError("update blew up")


def main(case):
    if case == "with_block_raises":
        with_block_raises()
    elif case == "zero_copy_and_0d":
        zero_copy_and_0d()
    elif case == "timeout_leaves_the_job":
        timeout_leaves_the_job()
    else:
        optimizer_raises()


def with_block_raises():
    # rank 1 fails inside `with`; rank 0 waits in a pull that rank 1's push would complete
    with psframe.create() as kv:
        kv.init("w", np.zeros(3))
        if kv.rank == 1:
            raise ValueError("boom inside the with block")
        kv.push("w", np.ones(3))
        kv.pull("w", np.zeros(3))


def zero_copy_and_0d():
    torch = __import__("torch")
    kv = psframe.create()
    kv.init("t", torch.zeros(4 * 2 ** 20))          # 16 MiB: sent without a copy
    kv.init("s", np.array(0.0))                     # a 0-d value
    ok = []
    for step in range(1, 6):
        t = torch.full((4 * 2 ** 20,), float(step))
        kv.push("t", t)
        t.fill_(-1.0)                               # the caller reuses its buffer at once
        out = torch.empty(4 * 2 ** 20)
        kv.pull("t", out)
        ok.append(bool((out == step * kv.num_workers).all()))
    kv.push("s", np.array(2.0))
    s = np.array(0.0)
    kv.pull("s", s)
    kv.close()
    print("RESULT " + json.dumps({"ok": ok, "scalar": float(s), "shape": list(s.shape)}))


def timeout_leaves_the_job():
    # the server stops reading mid-pushpull; the call times out while zmq still holds most of
    # the caller's 64 MiB (its socket buffers take a fraction of it)
    kv = psframe.create()
    n = 16 * 2 ** 20
    kv.init("x", np.zeros(n, np.float32))
    server = kv.server_stats()[0]["pid"]
    value, out = np.ones(n, np.float32), np.empty(n, np.float32)
    os.kill(server, signal.SIGSTOP)
    try:
        try:
            kv.pushpull("x", value, out)
            first = None
        except psframe.PSTimeoutError as exc:
            first = str(exc)
        value[:] = 7.0                    # the caller reuses its array at once
    finally:
        os.kill(server, signal.SIGCONT)
    try:
        kv.pull("x", out)
        later = None                      # the server got the pushpull after all: with what?
        seen = sorted(float(v) for v in np.unique(out))
    except psframe.PSError as exc:
        later, seen = f"{type(exc).__name__}: {exc}", None
    print("RESULT " + json.dumps({"first": first, "later": later, "seen": seen}), flush=True)


def optimizer_raises():
    kv = psframe.create()
    kv.init("w", np.zeros(3))
    kv.set_optimizer(Exploding(lr=0.1))
    kv.push("w", np.ones(3))
    try:
        kv.pull("w", np.zeros(3))
        err = None
    except psframe.OptimizerError as exc:
        err = str(exc)
    try:
        kv.close()              # the push's own error reply is still to be reported here
    except psframe.OptimizerError:
        pass
    print("RESULT " + json.dumps({"error": err}))


if __name__ == "__main__":
    main(sys.argv[1])
