"""Adagrad, step for step equal to ``torch.optim.Adagrad``, with a lazy row-sparse form."""
import numpy as np

from ..rowsparse import gather, scatter
from .base import Optimizer, _number, array_module, register


@register
class Adagrad(Optimizer):
    """Adagrad (Duchi et al.): ``sum += g * g``; ``w -= clr * g / (sqrt(sum) + eps)`` with
    ``clr = lr / (1 + t * lr_decay)``, as ``torch.optim.Adagrad``. On a sparse key only the
    touched rows' ``sum`` and weights change (torch's sparse-gradient path).

    Args:
        lr: learning rate.
        lr_decay: the rate decays as ``lr / (1 + t * lr_decay)`` with the update index ``t``.
        weight_decay: L2 penalty added to the gradient (on a sparse key: of the touched rows).
        initial_accumulator_value: starting value of every ``sum``.
        eps: added to the root of ``sum``.
        **common: ``rescale_grad``, ``clip_gradient``, ``lr_schedule``, ``multi_precision``.
    """
    elementwise = True
    supports_sparse = True

    def __init__(self, lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, **common):
        super().__init__(lr=lr, **common)
        self.lr_decay = _number("lr_decay", lr_decay)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.initial_accumulator_value = _number("initial_accumulator_value",
                                                 initial_accumulator_value)
        self.eps = _number("eps", eps)

    def create_slots(self, key, weight):
        xp = array_module(weight)
        total = xp.zeros(weight.shape, weight.dtype)    # pages mapped as rows are touched
        if self.initial_accumulator_value:
            total += self.initial_accumulator_value
        return {"sum": total}

    def _clr(self, lr, t):
        return lr / (1 + t * self.lr_decay)

    def step(self, key, weight, grad, state, lr, t):
        xp = array_module(weight)
        if self.weight_decay:
            grad = grad + self.weight_decay * weight
        total = state["sum"]
        total += grad * grad
        std = xp.sqrt(total)
        std += self.eps
        weight -= self._clr(lr, t) * (grad / std)

    def sparse_step(self, key, weight, rows, grad, state, lr, t):
        w = gather(weight, rows)
        if self.weight_decay:
            grad = grad + self.weight_decay * w
        total = state["sum"]
        s = gather(total, rows) + grad * grad
        scatter(total, rows, s)
        std = np.sqrt(s) + self.eps
        scatter(weight, rows, w + (-self._clr(lr, t)) * (grad / std))
