"""MXNet's ``test`` optimizer (``weight += rescale_grad * grad``), which MXNet's distributed
kvstore test uses; servers import this file through PSFRAME_USER_MODULES."""
from psframe import optim


@optim.register
class MXNetTest(optim.Optimizer):
    elementwise = True

    def step(self, key, weight, grad, state, lr, t):
        weight += grad
