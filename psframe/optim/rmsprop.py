"""RMSProp, step for step equal to ``torch.optim.RMSprop`` (non-centered)."""
from .base import Optimizer, _number, array_module, register


@register
class RMSProp(Optimizer):
    """RMSProp: ``sq = alpha * sq + (1 - alpha) * g**2``; ``w -= lr * g / (sqrt(sq) + eps)``,
    through a momentum buffer when ``momentum > 0``.

    Args:
        lr: learning rate.
        alpha: decay of the squared-gradient average.
        eps: added to its root.
        momentum: momentum factor (0 disables the buffer).
        weight_decay: L2 penalty added to the gradient.
        **common: ``rescale_grad``, ``clip_gradient``, ``lr_schedule``, ``multi_precision``.
    """
    elementwise = True

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0, **common):
        super().__init__(lr=lr, **common)
        self.alpha = _number("alpha", alpha)
        self.eps = _number("eps", eps)
        self.momentum = _number("momentum", momentum)
        self.weight_decay = _number("weight_decay", weight_decay)

    def create_slots(self, key, weight):
        xp = array_module(weight)
        slots = {"square_avg": xp.zeros_like(weight)}
        if self.momentum:
            slots["momentum"] = xp.zeros_like(weight)
        return slots

    def step(self, key, weight, grad, state, lr, t):
        xp = array_module(weight)
        if self.weight_decay:
            grad = grad + self.weight_decay * weight
        # sq = alpha * sq + (1 - alpha) * grad * grad; avg = sqrt(sq) + eps; then
        # buf = momentum * buf + grad / avg; w -= lr * buf (or w -= lr * (grad / avg)): the same
        # operations in the same order, with one scratch array instead of a temporary for each
        sq = state["square_avg"]
        sq *= self.alpha
        s = xp.multiply(grad, 1.0 - self.alpha, out=xp.empty_like(sq))   # (a 0-d result stays an array)
        s *= grad
        sq += s
        xp.sqrt(sq, out=s)
        s += self.eps
        xp.divide(grad, s, out=s)
        if self.momentum:
            buf = state["momentum"]
            buf *= self.momentum
            buf += s
            xp.multiply(buf, lr, out=s)
        else:
            s *= lr
        weight -= s
