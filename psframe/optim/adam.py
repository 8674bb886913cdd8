"""Adam and AdamW, step for step equal to ``torch.optim.Adam`` / ``torch.optim.AdamW``."""
from ..errors import OptimizerError
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
    decoupled = False

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, **common):
        super().__init__(lr=lr, **common)
        self.beta1 = _beta("beta1", beta1)
        self.beta2 = _beta("beta2", beta2)
        self.eps = _number("eps", eps)
        self.weight_decay = _number("weight_decay", weight_decay)

    def create_slots(self, key, weight):
        xp = array_module(weight)
        return {"exp_avg": xp.zeros_like(weight), "exp_avg_sq": xp.zeros_like(weight)}

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
