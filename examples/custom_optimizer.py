"""A custom server-side optimizer (Lion, Chen et al. 2023) with gradual warmup, trained under the launcher.

    psframe-launch -n 2 -s 2 --optimizer-module examples/custom_optimizer.py examples/custom_optimizer.py
    python examples/custom_optimizer.py          # the same script, serially (kind "local")

``--optimizer-module`` makes the servers import this file, which registers ``Lion`` there; the
``__main__`` guard keeps the training loop from running on the servers.
"""
import numpy as np

import psframe
import psframe.optim as optim
from psframe.optim import lr


@optim.register
class Lion(optim.Optimizer):
    """Lion: ``w -= lr * (sign(b1*m + (1-b1)*g) + wd*w)``; ``m = b2*m + (1-b2)*g``."""
    elementwise = True     # the same math on every element: servers update fused keys at once

    def __init__(self, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0, **common):
        super().__init__(lr=lr, **common)
        self.beta1, self.beta2, self.weight_decay = beta1, beta2, weight_decay

    def create_slots(self, key, weight):
        return {"exp_avg": optim.array_module(weight).zeros_like(weight)}

    def step(self, key, weight, grad, state, lr, t):
        xp = optim.array_module(weight)
        m = state["exp_avg"]
        direction = xp.sign(self.beta1 * m + (1 - self.beta1) * grad)
        weight -= lr * (direction + self.weight_decay * weight)
        m *= self.beta2
        m += (1 - self.beta2) * grad


def main(steps=200, batch=32, dim=10):
    with psframe.create() as kv:
        rng = np.random.default_rng(0)
        true_w = rng.standard_normal(dim)                  # same on every worker (seed 0)
        data = np.random.default_rng(100 + kv.rank)        # each worker its own samples
        global_batch = batch * kv.num_workers
        base = lr.scaled_lr(0.05, global_batch, base_batch=32)   # linear scaling rule
        kv.set_optimizer(Lion(rescale_grad=1.0 / global_batch,
                              lr_schedule=lr.Warmup(lr.Cosine(base, steps), steps=20)))
        w = np.zeros(dim)
        kv.init("w", w)
        for step in range(steps):
            x = data.standard_normal((batch, dim))
            y = x @ true_w
            grad = x.T @ (x @ w - y)                        # summed over the local batch
            kv.push("w", grad)
            kv.pull("w", out=w)
        err = float(np.abs(w - true_w).max())
        if kv.rank == 0:
            print(f"Lion on {kv.num_workers} worker(s): max |w - w*| = {err:.4f} after {steps} steps")
        return err


if __name__ == "__main__":
    main()
