"""PyTorch integration (optional extra ``psframe[torch]``; torch is imported only when used).

A torch training loop changes by two lines::

    psframe.torch.broadcast_parameters(model, kv)                  # everyone starts from rank 0
    opt = psframe.torch.DistributedOptimizer(torch.optim.SGD(...), kv)

``DistributedOptimizer`` averages every gradient over the workers through the KVStore, then
steps the wrapped torch optimizer on each worker (the update runs on the workers).
``ServerOptimizer`` is the parameter-server variant: the workers push gradients and pull weights,
and a ``psframe.optim`` optimizer runs on the servers. Both give every parameter (or every group
of small parameters, fused into one flat key) its own key, and by default push each key during
backward, as soon as its gradients are ready (``overlap``), with the first layers at the highest
priority; ``step()`` waits only for what is still in flight. docs/api.md describes gradient
accumulation, ``no_sync()``, unused parameters and ``overlap=False``.
"""
import numpy as np

from .buckets import FUSION_BYTES, buckets as _buckets
from .overlap import Overlapped

__all__ = ["broadcast_parameters", "DistributedOptimizer", "ServerOptimizer"]


def _tensors(model_or_tensors):
    """``(names, tensors)`` of a module's state_dict (parameters and buffers) or of tensors."""
    if hasattr(model_or_tensors, "state_dict"):
        items = list(model_or_tensors.state_dict().items())
    elif isinstance(model_or_tensors, dict):
        items = list(model_or_tensors.items())
    else:
        items = [(str(i), t) for i, t in enumerate(model_or_tensors)]
    return [n for n, _ in items], [t for _, t in items]


def broadcast_parameters(model, kv, prefix="bcast"):
    """Give every worker rank 0's parameters and buffers (through ``kv.init``, where rank 0's
    value wins). Call once, after building the model and before training, on every worker.

    Args:
        model: a ``torch.nn.Module``, a state dict, or a list of tensors; updated in place.
        kv: the job's KVStore.
        prefix: key prefix; each call needs its own.
    """
    import torch
    names, tensors = _tensors(model)
    keys = [f"{prefix}:{n}" for n in names]
    values = [t.detach().cpu().numpy() for t in tensors]
    kv.init(keys, values)
    outs = [np.empty_like(v) for v in values]
    kv.pull(keys, outs)
    with torch.no_grad():
        for t, o in zip(tensors, outs):
            t.copy_(torch.from_numpy(o))


def _params_of(optimizer):
    return [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]


class DistributedOptimizer(Overlapped):
    """Wrap a torch optimizer so ``step()`` first averages the gradients over all workers.

    Behaves like the wrapped optimizer otherwise (``zero_grad``, ``param_groups``,
    ``state_dict``... are passed through). Every worker must call ``step()`` equally often;
    a parameter without a gradient contributes zeros (and gets a zero gradient).

    Args:
        optimizer: a ``torch.optim.Optimizer`` over CPU (or CUDA) parameters.
        kv: the job's KVStore; keys ``{prefix}:0``, ``{prefix}:1``... are created here (every
            worker must construct the wrapper, as for any ``kv.init``).
        prefix: key prefix.
        fusion_bytes: parameters below this size are fused with their neighbours into one key.
        overlap: push during backward (default); False pushes everything from ``step()``.
    """

    def __init__(self, optimizer, kv, prefix="grad", fusion_bytes=FUSION_BYTES, overlap=True):
        self.optimizer = optimizer
        buckets = _buckets(_params_of(optimizer), prefix, fusion_bytes)
        kv.init([b.key for b in buckets], [b.buf for b in buckets])
        super().__init__(kv, buckets, overlap)

    def synchronize(self):
        """Replace every gradient by its average over the workers."""
        from .. import timeline as tl
        start = tl.now_us()
        self._push_rest()
        self._wait_all(start)

    def step(self, closure=None):
        """Average the gradients, then step the wrapped optimizer."""
        self.synchronize()
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _prepare(self, b):
        self._gather(b)

    def _again(self, b):
        # A second backward in one step (outside no_sync): the bucket is pushed again with the
        # accumulated total, so the step averages the sum of both, as with overlap off.
        b.pending.wait()
        b.pending = None

    def _finish(self, b):
        import torch
        b.pending.wait()
        b.pending = None
        for p in b.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        b.scatter([p.grad for p in b.params], b.buf, 1.0 / self.kv.num_workers)

    def __getattr__(self, name):
        if name == "optimizer":
            raise AttributeError(name)
        return getattr(self.optimizer, name)


class ServerOptimizer(Overlapped):
    """Parameter-server update: the servers hold the weights and run ``optimizer``; each step
    pushes this worker's gradients (divided by ``num_workers``, so the servers apply the
    average) and pulls the new weights into the parameters.

    Creating it also broadcasts rank 0's weights (the keys are initialised from them) and sets
    the job's server optimizer, which then applies to every key of the KVStore.

    Given a module (and overlap on), ``step()`` returns without waiting for the new weights:
    forward pre-hooks make each submodule wait only for its own parameters' weights when the
    next forward reaches it; the module's ``state_dict()`` waits for all of them. Call
    ``synchronize()`` before reading the parameters any other way outside a forward.

    Args:
        params: a module or an iterable of parameters.
        kv: the job's KVStore (every worker constructs this, at the same point).
        optimizer: a ``psframe.optim.Optimizer`` (e.g. ``psframe.optim.SGD(lr, momentum)``).
        prefix, fusion_bytes, overlap: as for ``DistributedOptimizer``.
    """

    def __init__(self, params, kv, optimizer, prefix="weight", fusion_bytes=FUSION_BYTES, overlap=True):
        module = params if hasattr(params, "parameters") else None
        params = list(params.parameters() if module is not None else params)
        self.params = [p for p in params if p.requires_grad]
        buckets = _buckets(self.params, prefix, fusion_bytes)
        for b in buckets:
            b.out = np.empty_like(b.buf)
            off = 0
            for p, n in zip(b.params, b.sizes):
                b.out[off:off + n] = p.detach().reshape(-1).cpu().numpy()
                off += n
        kv.init([b.key for b in buckets], [b.out for b in buckets])
        kv.pull([b.key for b in buckets], [b.out for b in buckets])
        for b in buckets:
            b.scatter([p.data for p in b.params], b.out)
        kv.set_optimizer(optimizer)
        super().__init__(kv, buckets, overlap)
        self._lazy = overlap and module is not None
        if self._lazy:
            self._register_forward_waits(module)

    def _register_forward_waits(self, module):
        of_param = {id(p): b for b in self.buckets for p in b.params}
        for m in module.modules():
            mine = list({id(b): b for p in m.parameters(recurse=False)
                         if (b := of_param.get(id(p))) is not None}.values())
            if mine:
                self._hooks.append(m.register_forward_pre_hook(
                    lambda _m, _args, mine=mine: self._weights_for(mine)))
        # model.state_dict() (a checkpoint) sees the newest weights too
        self._hooks.append(module.register_state_dict_pre_hook(lambda *_: self.synchronize()))

    def _weights_for(self, buckets):
        for b in buckets:
            if b.pending is not None:
                self._finish(b)

    def step(self):
        """Push the gradients still to push; pull the updated weights into the parameters
        (lazily, at each submodule's next forward, when given a module with overlap on)."""
        from .. import timeline as tl
        start = tl.now_us()
        self._push_rest()
        if not self._lazy:
            self._wait_all(start)

    def synchronize(self):
        """Wait for every pulled weight and write it into the parameters."""
        self._weights_for(self.buckets)

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _prepare(self, b):
        self._gather(b)
        b.wait_copied()
        scale = 1.0 / self.kv.num_workers
        if scale != 1.0:
            np.multiply(b.buf, scale, out=b.buf)

    def _again(self, b):
        if b.launched_at == self._steps:
            raise RuntimeError(
                f"psframe.torch.ServerOptimizer: the gradients of {b.key!r} became ready again "
                f"before step() (a second backward in one step); the servers apply every push, so "
                f"for gradient accumulation run all but the last backward inside opt.no_sync()")
        self._finish(b)      # last step's weights, never needed by a forward: apply them now

    def _finish(self, b):
        b.pending.wait()
        b.pending = None
        b.scatter([p.data for p in b.params], b.out)
