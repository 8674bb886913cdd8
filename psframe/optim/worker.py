"""Worker-side optimizer mode: servers only sum gradients; every worker applies the optimizer.

This is how Horovod and BytePS run: no ``kv.set_optimizer``; each step ``pushpull``s the gradient
of a key (the servers replace the stored value with the sum over workers) and then runs the same
deterministic update on every worker, so the replicas stay identical.
"""

from ..errors import OptimizerError
from .base import Optimizer, array_module

__all__ = ["WorkerOptimizer"]


class WorkerOptimizer:
    """Runs ``opt`` on the workers on gradients summed through ``kv``.

    Args:
        opt: any ``psframe.optim.Optimizer`` (it need not be registered: it never leaves the
            process).
        kv: a KVStore on which ``set_optimizer`` was *not* called.

    Example::

        wopt = psframe.optim.WorkerOptimizer(psframe.optim.SGD(lr=0.1, momentum=0.9), kv)
        wopt.init("w", w)              # every worker starts from rank 0's w
        for batch in data:
            wopt.step("w", w, grad(w, batch))
    """

    def __init__(self, opt, kv):
        if not isinstance(opt, Optimizer):
            raise OptimizerError(f"WorkerOptimizer needs a psframe.optim.Optimizer, got {opt!r}")
        self.optimizer = opt
        self.kv = kv
        self.states = {}
        self._buffers = {}

    def init(self, key, weight):
        """Initialise ``key`` on the store and overwrite ``weight`` with rank 0's value.

        The store's copy of the key then carries summed gradients, not weights.

        Args:
            key: int or str key.
            weight: this worker's initial weight, replaced in place by rank 0's.
        """
        self.kv.init(key, weight)
        self.kv.pull(key, out=weight)
        self.states.pop(key, None)

    def step(self, key, weight, grad):
        """Sum ``grad`` over workers and apply one update to ``weight`` in place.

        Args:
            key: the key ``init`` was called with.
            weight: this worker's replica, updated in place.
            grad: this worker's gradient (its ``rescale_grad`` applies to the sum).

        Raises:
            PSError: from the store (shape/dtype mismatch, uninitialised key, lost peers).
        """
        buf = self._buffers.get(key)
        if buf is None or buf.shape != grad.shape or buf.dtype != grad.dtype:
            buf = self._buffers[key] = array_module(grad).empty_like(grad)
        self.kv.pushpull(key, grad, out=buf)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = self.optimizer.create_state(key, weight)
        self.optimizer.update(key, weight, buf, state)

    def export_state(self):
        """``{key: {name: np.ndarray}}`` of every key's optimizer state, for checkpoints."""
        return {k: self.optimizer.export_state(s) for k, s in self.states.items()}

    def import_state(self, states):
        """Restore what ``export_state`` returned."""
        self.states = {k: self.optimizer.import_state(s) for k, s in states.items()}
