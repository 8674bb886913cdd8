"""Worker script for psframe.torch's overlap of communication with backward.

Argument 1: "equal" (default): trains one small model with DistributedOptimizer and
ServerOptimizer, overlap on and off, and saves rank 0's final weights per variant to
``argv[2]/<variant>.npz``; every step accumulates over 2 backward calls, a parameter is unused
in even steps, and fusion_bytes makes some parameters share a key and others travel alone.
"timeline": a model whose backward sleeps per layer, trained with PSFRAME_TIMELINE set.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

import psframe
import psframe.torch

mode = sys.argv[1] if len(sys.argv) > 1 else "equal"
STEPS, LR, FUSION = 4, 0.1, 4096
torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 16)          # 512 B + 64 B: fused
        self.big = nn.Linear(16, 300)      # 19 KB alone; its bias (1.2 KB) fused
        self.b = nn.Linear(300, 4)         # 4.8 KB alone; its bias fused with `unused`
        self.unused = nn.Linear(4, 4)      # gets a gradient only in odd steps

    def forward(self, x, step):
        y = self.b(torch.relu(self.big(torch.relu(self.a(x)))))
        return y + self.unused(y) if step % 2 else y


def batch(rank, step, micro):
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    return torch.randn(6, 8, generator=g, dtype=torch.float32), torch.randn(6, 4, generator=g)


def train(kv, kind, overlap, accumulate, prefix):
    model = Net()
    if kind == "dist":
        opt = psframe.torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                                                 kv, prefix=prefix, fusion_bytes=FUSION, overlap=overlap)
    else:
        opt = psframe.torch.ServerOptimizer(model, kv, psframe.optim.SGD(lr=LR, momentum=0.9),
                                            prefix=prefix, fusion_bytes=FUSION, overlap=overlap)
    for step in range(STEPS):
        opt.zero_grad()
        for micro in range(2):
            x, y = batch(kv.rank, step, micro)
            loss = ((model(x, step) - y) ** 2).mean()
            if micro == 0 and accumulate == "no_sync":
                with opt.no_sync():
                    loss.backward()
            else:
                loss.backward()
        opt.step()
    if kind == "server":
        opt.synchronize()
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def equal(kv, out_dir):
    variants = [("dist", "no_sync"), ("dist", "plain"), ("server", "no_sync")]
    for kind, accumulate in variants:       # DistributedOptimizer's keys before set_optimizer
        for overlap in (True, False):
            name = f"{kind}-{accumulate}-{'on' if overlap else 'off'}"
            weights = train(kv, kind, overlap, accumulate, prefix=name)
            if kv.rank == 0:
                np.savez(os.path.join(out_dir, name + ".npz"), **weights)
    kv.barrier()
    print("RESULT " + json.dumps({"variants": len(variants) * 2}), flush=True)


class Sleep(torch.autograd.Function):
    """Identity whose backward waits ``ms`` (device-like time: no host CPU)."""

    @staticmethod
    def forward(ctx, x, ms):
        ctx.ms = ms
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        time.sleep(ctx.ms / 1000)
        return g, None


def timeline(kv):
    layers = nn.ModuleList(nn.Linear(256, 256) for _ in range(6))
    opt = psframe.torch.DistributedOptimizer(torch.optim.SGD(layers.parameters(), lr=0.01), kv,
                                             prefix="tl")
    for step in range(3):
        opt.zero_grad()
        h = torch.randn(4, 256)
        for layer in layers:
            h = Sleep.apply(layer(h), 20)
        h.sum().backward()
        opt.step()
    kv.barrier()
    print("RESULT " + json.dumps({"steps": 3}), flush=True)


if __name__ == "__main__":
    with psframe.create() as kv:
        if mode == "equal":
            equal(kv, sys.argv[2])
        else:
            timeline(kv)
