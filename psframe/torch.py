"""PyTorch integration (optional extra ``psframe[torch]``; torch is imported only when used).

A torch training loop changes by two lines::

    psframe.torch.broadcast_parameters(model, kv)                  # everyone starts from rank 0
    opt = psframe.torch.DistributedOptimizer(torch.optim.SGD(...), kv)

``DistributedOptimizer`` averages every gradient over the workers through the KVStore, then
steps the wrapped torch optimizer on each worker (the update runs on the workers).
``ServerOptimizer`` is the parameter-server variant: the workers push gradients and pull weights,
and a ``psframe.optim`` optimizer runs on the servers. Both give every parameter (or every group
of small parameters, fused into one flat key and one message) its own key, and push-pull all of
them in one call, first layers first, so a step costs one message and reply per server.
"""
import numpy as np

from . import arrays

__all__ = ["broadcast_parameters", "DistributedOptimizer", "ServerOptimizer"]

#: Parameters smaller than this share a fused key (and message) with their neighbours.
FUSION_BYTES = 64 * 1024


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


class _Bucket:
    """One key: a large parameter alone, or consecutive small ones fused into a flat buffer."""

    def __init__(self, key, params):
        self.key, self.params = key, params
        self.sizes = [p.numel() for p in params]
        dtype = params[0].detach().cpu().numpy().dtype
        self.buf = np.zeros(sum(self.sizes), dtype)

    def flat(self, tensors):
        """``(array, copied)``: the tensors as one flat array, zero-copy for a lone CPU tensor."""
        if len(tensors) == 1:
            view = arrays.host_view(tensors[0])
            if view is not None:
                return view.reshape(-1), False
        off = 0
        for t, n in zip(tensors, self.sizes):
            self.buf[off:off + n] = t.detach().reshape(-1).cpu().numpy()
            off += n
        return self.buf, True

    def scatter(self, tensors, flat, scale=1.0):
        """Copy ``flat * scale`` back into the tensors."""
        import torch
        off = 0
        with torch.no_grad():
            for t, n in zip(tensors, self.sizes):
                src = torch.from_numpy(flat[off:off + n]).view_as(t)
                t.copy_(src * scale if scale != 1.0 else src)
                off += n


def _buckets(params, prefix, fusion_bytes):
    """Split ``params`` (in order) into buckets: large ones alone, runs of small ones of one
    dtype fused up to ``fusion_bytes``."""
    out, run, run_bytes = [], [], 0

    def close_run():
        nonlocal run, run_bytes
        if run:
            out.append(_Bucket(f"{prefix}:{len(out)}", run))
            run, run_bytes = [], 0

    for p in params:
        nbytes = p.numel() * p.element_size()
        if nbytes >= fusion_bytes:
            close_run()
            out.append(_Bucket(f"{prefix}:{len(out)}", [p]))
            continue
        if run and (run[0].dtype != p.dtype or run_bytes + nbytes > fusion_bytes):
            close_run()
        run.append(p)
        run_bytes += nbytes
    close_run()
    return out


def _params_of(optimizer):
    return [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]


class DistributedOptimizer:
    """Wrap a torch optimizer so ``step()`` first averages the gradients over all workers.

    Behaves like the wrapped optimizer otherwise (``zero_grad``, ``param_groups``,
    ``state_dict``... are passed through). Every worker must call ``step()`` equally often;
    a parameter without a gradient contributes zeros.

    Args:
        optimizer: a ``torch.optim.Optimizer`` over CPU (or device) parameters.
        kv: the job's KVStore; keys ``{prefix}:0``, ``{prefix}:1``... are created here (every
            worker must construct the wrapper, as for any ``kv.init``).
        prefix: key prefix.
        fusion_bytes: parameters below this size are fused with their neighbours into one key.
    """

    def __init__(self, optimizer, kv, prefix="grad", fusion_bytes=FUSION_BYTES):
        self.optimizer, self.kv = optimizer, kv
        self._buckets = _buckets(_params_of(optimizer), prefix, fusion_bytes)
        kv.init([b.key for b in self._buckets], [b.buf for b in self._buckets])

    def synchronize(self):
        """Replace every gradient by its average over the workers (one pushpull call)."""
        import torch
        flats, grads = [], []
        for b in self._buckets:
            for p in b.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            g = [p.grad for p in b.params]
            grads.append(g)
            flats.append(b.flat(g))
        keys = [b.key for b in self._buckets]
        # One call, keys in parameter order: the first layers' values are requested first. (The
        # API's priority is one number per call, so an order inside a call is all it can say.)
        self.kv.pushpull(keys, [f for f, _ in flats])
        scale = 1.0 / self.kv.num_workers
        for b, g, (flat, copied) in zip(self._buckets, grads, flats):
            if copied:
                b.scatter(g, flat, scale)
            elif scale != 1.0:
                g[0].mul_(scale)

    def step(self, closure=None):
        """Average the gradients, then step the wrapped optimizer."""
        self.synchronize()
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


class ServerOptimizer:
    """Parameter-server update: the servers hold the weights and run ``optimizer``; ``step()``
    pushes this worker's gradients (divided by ``num_workers``, so the servers apply the
    average) and pulls the new weights into the parameters.

    Creating it also broadcasts rank 0's weights (the keys are initialised from them) and sets
    the job's server optimizer, which then applies to every key of the KVStore.

    Args:
        params: a module or an iterable of parameters.
        kv: the job's KVStore (every worker constructs this, at the same point).
        optimizer: a ``psframe.optim.Optimizer`` (e.g. ``psframe.optim.SGD(lr, momentum)``).
        prefix, fusion_bytes: as for ``DistributedOptimizer``.
    """

    def __init__(self, params, kv, optimizer, prefix="weight", fusion_bytes=FUSION_BYTES):
        params = list(params.parameters() if hasattr(params, "parameters") else params)
        self.params, self.kv = [p for p in params if p.requires_grad], kv
        self._buckets = _buckets(self.params, prefix, fusion_bytes)
        weights = [b.flat([p.data for p in b.params])[0].copy() for b in self._buckets]
        kv.init([b.key for b in self._buckets], weights)
        kv.pull([b.key for b in self._buckets], weights)
        for b, w in zip(self._buckets, weights):
            b.scatter([p.data for p in b.params], w)
        kv.set_optimizer(optimizer)
        self._wbufs = weights

    def step(self):
        """Push the gradients, pull the updated weights into the parameters."""
        import torch
        scale = 1.0 / self.kv.num_workers
        keys, grads = [], []
        for b in self._buckets:
            g = [p.grad if p.grad is not None else torch.zeros_like(p) for p in b.params]
            flat, _ = b.flat(g)
            grads.append(flat * scale if scale != 1.0 else flat)
            keys.append(b.key)
        self.kv.pushpull(keys, grads, out=self._wbufs)
        for b, w in zip(self._buckets, self._wbufs):
            b.scatter([p.data for p in b.params], w)

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
