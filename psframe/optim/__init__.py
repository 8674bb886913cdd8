"""psframe.optim: optimizers applied where the weights live, shipped as a registered name + config.

``to_spec``/``from_spec`` are the only way an optimizer crosses the wire; the registry
(``@register``) is the only way a name from the wire becomes code.
"""
from . import lr
from .base import Optimizer, array_module, from_spec, register, registered, to_spec
from .sgd import SGD
from .adam import Adam, AdamW
from .adagrad import Adagrad
from .rmsprop import RMSProp
from .worker import WorkerOptimizer

__all__ = ["Optimizer", "register", "registered", "to_spec", "from_spec", "array_module", "lr",
           "SGD", "Adam", "AdamW", "Adagrad", "RMSProp", "WorkerOptimizer"]
