"""Adam and AdamW, step for step equal to ``torch.optim.Adam`` / ``torch.optim.AdamW``."""
from ..errors import OptimizerError
import numpy as np

from ..rowsparse import gather, scatter
from .base import Optimizer, _number, array_module, register


def _beta(name, value):
    value = _number(name, value)
    if not value < 1.0:
        raise OptimizerError(f"{name}={value!r} must be in [0, 1)")
    return value


@register
class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is an L2 term added to the
    gradient, as in ``torch.optim.Adam``.

    Args:
        lr: learning rate.
        beta1: decay of the first-moment average.
        beta2: decay of the second-moment average.
        eps: added to the bias-corrected root of the second moment.
        weight_decay: L2 penalty added to the gradient.
        **common: ``rescale_grad``, ``clip_gradient``, ``lr_schedule``, ``multi_precision``.
    """
    elementwise = True
    supports_sparse = True
    decoupled = False

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, **common):
        super().__init__(lr=lr, **common)
        self.beta1 = _beta("beta1", beta1)
        self.beta2 = _beta("beta2", beta2)
        self.eps = _number("eps", eps)
        self.weight_decay = _number("weight_decay", weight_decay)

    def create_slots(self, key, weight):
        xp = array_module(weight)
        # zeros, not zeros_like: pages are mapped as they are first written, so the state of a
        # sparse key's table costs memory only for the rows its steps touched
        return {"exp_avg": xp.zeros(weight.shape, weight.dtype),
                "exp_avg_sq": xp.zeros(weight.shape, weight.dtype)}

    def step(self, key, weight, grad, state, lr, t):
        xp = array_module(weight)
        if self.weight_decay:
            if self.decoupled:
                weight *= 1.0 - lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * weight
        m, v = state["exp_avg"], state["exp_avg_sq"]
        n = t + 1
        # The same operations in the same order as
        #   m += (1 - beta1) * (grad - m)                  (torch's lerp_, same rounding)
        #   v = beta2 * v + (1 - beta2) * grad * grad
        #   w -= lr / (1 - beta1**n) * (m / (sqrt(v) / sqrt(1 - beta2**n) + eps))
        # with one scratch array instead of a temporary per operation (a third less time).
        s = xp.subtract(grad, m, out=xp.empty_like(m))     # (out=: a 0-d result stays an array)
        s *= 1.0 - self.beta1
        m += s
        v *= self.beta2
        xp.multiply(grad, 1.0 - self.beta2, out=s)
        s *= grad
        v += s
        xp.sqrt(v, out=s)
        s /= (1.0 - self.beta2 ** n) ** 0.5
        s += self.eps
        xp.divide(m, s, out=s)
        s *= lr / (1.0 - self.beta1 ** n)
        weight -= s


    def check_sparse(self):
        super().check_sparse()
        if self.weight_decay:
            raise OptimizerError(f"{type(self).__name__} with weight_decay has no lazy form on "
                                 f"sparse keys (as torch.optim.SparseAdam); use weight_decay=0")

    def sparse_step(self, key, weight, rows, grad, state, lr, t):
        """``torch.optim.SparseAdam`` on the touched rows: moments of other rows stay as they
        were; bias corrections use the table's update count."""
        m, v = state["exp_avg"], state["exp_avg_sq"]
        old_m, old_v = gather(m, rows), gather(v, rows)
        m_step = (grad - old_m) * (1.0 - self.beta1)
        v_step = (grad * grad - old_v) * (1.0 - self.beta2)
        numer = m_step + old_m
        scatter(m, rows, numer)
        v_new = v_step + old_v
        scatter(v, rows, v_new)
        denom = np.sqrt(v_new) + self.eps
        n = t + 1
        step_size = lr * (1.0 - self.beta2 ** n) ** 0.5 / (1.0 - self.beta1 ** n)
        scatter(weight, rows, gather(weight, rows) + (-step_size) * (numer / denom))


@register
class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay
    ``w *= 1 - lr * weight_decay`` before the Adam step, as in ``torch.optim.AdamW``.

    Args:
        lr: learning rate.
        beta1: decay of the first-moment average.
        beta2: decay of the second-moment average.
        eps: added to the bias-corrected root of the second moment.
        weight_decay: decoupled decay factor (times ``lr``).
        **common: ``rescale_grad``, ``clip_gradient``, ``lr_schedule``, ``multi_precision``.
    """
    decoupled = True

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, **common):
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                         **common)
