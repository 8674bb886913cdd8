"""SGD with momentum, Nesterov momentum and L2 weight decay, step for step equal to ``torch.optim.SGD``."""
from ..errors import OptimizerError
from ..rowsparse import gather, scatter
from .base import Optimizer, _number, array_module, register


@register
class SGD(Optimizer):
    """Stochastic gradient descent (``torch.optim.SGD`` with ``dampening=0``).

    ``g = grad + weight_decay * w``; with momentum ``buf = momentum * buf + g`` and the step is
    ``buf`` (or ``g + momentum * buf`` with Nesterov); ``w -= lr * step``.

    Args:
        lr: learning rate.
        momentum: momentum factor (0 disables the momentum buffer).
        nesterov: use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient.
        **common: ``rescale_grad``, ``clip_gradient``, ``lr_schedule``, ``multi_precision``
            (see ``Optimizer``).
    """
    elementwise = True
    supports_sparse = True

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, **common):
        super().__init__(lr=lr, **common)
        self.momentum = _number("momentum", momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = _number("weight_decay", weight_decay)
        if self.nesterov and self.momentum <= 0:
            raise OptimizerError("nesterov=True needs momentum > 0; set momentum or drop nesterov")

    def create_slots(self, key, weight):
        if self.momentum == 0:
            return {}
        return {"momentum": array_module(weight).zeros_like(weight)}

    def step(self, key, weight, grad, state, lr, t):
        if self.weight_decay:
            grad = grad + self.weight_decay * weight
        if self.momentum:
            buf = state["momentum"]
            buf *= self.momentum
            buf += grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        weight -= lr * grad

    def check_sparse(self):
        super().check_sparse()
        if self.momentum:
            raise OptimizerError("SGD with momentum has no lazy row-sparse form; use momentum=0 "
                                 "(or Adam/Adagrad) for sparse keys")

    def sparse_step(self, key, weight, rows, grad, state, lr, t):
        """Touched rows only: ``w[r] -= lr * (g[r] + weight_decay * w[r])``."""
        w = gather(weight, rows)
        if self.weight_decay:
            grad = grad + self.weight_decay * w
        w -= lr * grad
        scatter(weight, rows, w)
