"""The ``Optimizer`` base class, its registry, and the name + msgpack-config spec it travels as.

Servers call ``from_spec(spec)``, then per key ``create_state(key, weight)`` once and
``update(key, weight, grad, state)`` once per step, in place. ``state`` is a dict of arrays that
holds everything, including the per-key update count ``t``, so every shard is self-contained.
"""
import numbers

import numpy as np

from ..arrays import array_module, to_host
from ..errors import OptimizerError
from . import lr as _lr
from .registry import Registry, build, check_spec, config_from_attributes

__all__ = ["Optimizer", "register", "to_spec", "from_spec", "registered", "array_module"]

_registry = Registry("optimizer", "@psframe.optim.register")

#: State entries the base class owns; subclasses pick other names for their slots.
STEP_KEY = "t"
MASTER_KEY = "weight32"


def register(cls=None, *, name=None):
    """Class decorator that registers an ``Optimizer`` subclass so servers can build it by name.

    The name is ``name=`` if given, else a ``name`` attribute set in the class body, else the
    lowercase class name. Servers know the class only if they import the file defining it
    (``psframe-launch --optimizer-module FILE``).

    Raises:
        OptimizerError: the name is already taken by a different class.
    """
    return _registry.register(cls, name=name)


def registered():
    """Sorted names of the registered optimizers."""
    return _registry.names()


def _number(name, value, minimum=0.0, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < minimum:
        raise OptimizerError(f"{name}={value!r} must be a number >= {minimum}")
    return value


class Optimizer:
    """Base class of all optimizers: the common options and the update template.

    Subclasses usually override only ``create_slots`` (their extra state) and ``step`` (the math);
    ``create_state`` and ``update`` then add the update count, the float32 master copy of
    ``multi_precision``, ``rescale_grad``, ``clip_gradient`` and the learning-rate schedule.
    Every constructor argument must be stored under its own attribute name (that is how
    ``get_config`` rebuilds it on the servers), or override ``get_config``.

    Args:
        lr: learning rate (ignored when ``lr_schedule`` is given).
        rescale_grad: multiplies the summed gradient first (e.g. ``1 / global_batch``).
        clip_gradient: if set, clip each gradient element to ``[-clip_gradient, clip_gradient]``
            after rescaling.
        lr_schedule: a ``psframe.optim.lr`` schedule ``t -> lr`` (``t`` = update index of the
            key, from 0); overrides ``lr``.
        multi_precision: for float16 weights, keep a float32 master copy in the state, update it
            in float32 and write the rounded result to the float16 weight.

    Attributes:
        schedule_fields: constructor arguments that hold a schedule (sent as nested specs).
        elementwise: True when ``step`` does the same math on every element given ``lr`` and
            ``t``, and ``create_slots`` returns arrays shaped like the weight, neither looking at
            ``key``. A server may then update the small keys of a fusion group with one call on
            their concatenation instead of one call per key (the built-in optimizers are; a
            custom optimizer opts in by setting it).
        supports_sparse: True when the class implements ``sparse_step``, the lazy update of
            the rows a step of a sparse key touched (the built-ins SGD, Adagrad and Adam do);
            a sparse key under an optimizer without it is refused with an ``OptimizerError``.
    """
    schedule_fields = ("lr_schedule",)
    elementwise = False
    supports_sparse = False

    def __init__(self, lr=0.01, rescale_grad=1.0, clip_gradient=None, lr_schedule=None,
                 multi_precision=False):
        self.lr = _number("lr", lr)
        self.rescale_grad = _number("rescale_grad", rescale_grad, minimum=-np.inf)
        self.clip_gradient = _number("clip_gradient", clip_gradient, allow_none=True)
        self.lr_schedule = _lr.as_schedule(lr_schedule)
        self.multi_precision = bool(multi_precision)

    # ---- what subclasses override ---------------------------------------------------------
    def create_slots(self, key, weight):
        """Extra state of one key, as a dict of arrays shaped like ``weight`` (default: none).

        Args:
            key: the user's key (int or str).
            weight: the array the updates apply to (the float32 master under multi_precision).
        """
        return {}

    def step(self, key, weight, grad, state, lr, t):
        """Apply one update in place on ``weight`` and ``state``.

        Args:
            key: the user's key.
            weight: array to update in place (float32 master copy under multi_precision).
            grad: prepared gradient (rescaled, clipped, in ``weight``'s dtype); read-only.
            state: this key's state dict, updated in place.
            lr: learning rate of this update.
            t: index of this update of this key, from 0.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    # ---- what servers (and WorkerOptimizer) call -----------------------------------------
    def create_state(self, key, weight):
        """State of one key (or of this server's slice of it): a dict of arrays.

        Args:
            key: the user's key.
            weight: the stored value (the server's slice of it).

        Returns:
            dict[str, array]: includes ``"t"`` (0-d int64 update count) and, under
            multi_precision with a float16 weight, ``"weight32"``.
        """
        if weight.dtype.kind != "f":
            raise OptimizerError(f"key {key!r}: {type(self).__name__} updates floating-point "
                                 f"weights, got dtype {weight.dtype}; initialise the key as "
                                 f"float16/32/64 or do not set an optimizer for it")
        state = {STEP_KEY: np.zeros((), dtype=np.int64)}
        target = weight
        if self.multi_precision and weight.dtype == np.float16:
            target = state[MASTER_KEY] = weight.astype(np.float32)
        slots = self.create_slots(key, target)
        clash = set(slots) & set(state)
        if clash:
            raise OptimizerError(f"{type(self).__name__}.create_slots uses reserved state "
                                 f"names {sorted(clash)}; rename them")
        state.update(slots)
        return state

    def learning_rate(self, t):
        """Learning rate of update ``t`` (the schedule's if one is set, else ``lr``)."""
        return float(self.lr_schedule(t)) if self.lr_schedule is not None else self.lr

    def prepare_grad(self, grad, dtype):
        """``grad`` cast to ``dtype``, times ``rescale_grad``, clipped; never modifies ``grad``."""
        xp = array_module(grad)
        g = grad if grad.dtype == dtype else grad.astype(dtype)
        if self.rescale_grad != 1.0:
            g = g * dtype.type(self.rescale_grad)
        if self.clip_gradient is not None:
            g = xp.clip(g, -self.clip_gradient, self.clip_gradient)
        return g

    def update(self, key, weight, grad, state):
        """Apply one update to ``weight`` (in place) from the summed gradient ``grad``.

        Args:
            key: the user's key.
            weight: the stored value (this server's slice), modified in place.
            grad: the gradient summed over workers; ``rescale_grad`` is applied here.
            state: the dict from ``create_state``, modified in place.

        Raises:
            OptimizerError: ``grad`` and ``weight`` differ in shape, or ``step`` failed (the
                cause is chained).
        """
        if grad.shape != weight.shape:
            raise OptimizerError(f"key {key!r}: gradient shape {grad.shape} does not match "
                                 f"weight shape {weight.shape}")
        if STEP_KEY not in state:
            raise OptimizerError(f"key {key!r}: the state of {type(self).__name__} has no update "
                                 f"count {STEP_KEY!r}; an overriding create_state() must start "
                                 f"from super().create_state(key, weight)")
        master = state.get(MASTER_KEY)
        target = weight if master is None else master
        t = int(state[STEP_KEY])
        g = self.prepare_grad(grad, target.dtype)
        try:
            self.step(key, target, g, state, self.learning_rate(t), t)
        except Exception as exc:   # name the optimizer, key and update in what the job reports
            raise OptimizerError.wrapping(
                exc, f"{type(self).__name__}.step failed on key {key!r} at update {t}:",
                "that weight may be partly updated, so fix the optimizer and restart from a checkpoint")
        state[STEP_KEY][...] = t + 1
        if master is not None:
            weight[...] = master

    # ---- sparse keys ----------------------------------------------------------------------
    def check_sparse(self):
        """Raise unless this optimizer can update sparse keys as configured (subclasses also
        refuse options that have no lazy form, e.g. momentum).

        Raises:
            OptimizerError: naming the optimizer and what to change.
        """
        if not self.supports_sparse:
            raise OptimizerError(
                f"{type(self).__name__} does not support sparse keys (row-sparse updates); use "
                f"SGD, Adagrad or Adam for them, or implement sparse_step() and set "
                f"supports_sparse = True on the class")
        if self.multi_precision:
            raise OptimizerError(f"{type(self).__name__}(multi_precision=True) is not supported for "
                                 f"sparse keys; store the table as float32")

    def sparse_step(self, key, weight, rows, grad, state, lr, t):
        """Apply one lazy update to rows ``rows`` of ``weight`` (and of the state's slots).

        Args:
            key: the user's key.
            weight: this server's part of the table, ``(rows_held, dim)``, updated in place.
            rows: sorted, unique int64 indices into ``weight`` of the rows the step touched.
            grad: ``(len(rows), dim)`` prepared gradient of those rows; read-only.
            state: the table's state dict (slots shaped like ``weight``).
            lr: learning rate of this update.
            t: index of this update of the table, from 0 (every step counts, as in torch).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement sparse_step()")

    def update_rows(self, key, weight, rows, grad, state):
        """Apply one step of a sparse key: ``grad[i]`` is the summed gradient of row
        ``rows[i]`` of ``weight``; other rows and their state stay untouched.

        Raises:
            OptimizerError: unsupported, mismatched shapes, or ``sparse_step`` failed.
        """
        self.check_sparse()
        if grad.shape != (len(rows),) + tuple(weight.shape[1:]):
            raise OptimizerError(f"key {key!r}: {len(rows)} rows need a gradient of shape "
                                 f"{(len(rows),) + tuple(weight.shape[1:])}, got {grad.shape}")
        t = int(state[STEP_KEY])
        g = self.prepare_grad(grad, weight.dtype)
        try:
            self.sparse_step(key, weight, rows, g, state, self.learning_rate(t), t)
        except Exception as exc:
            raise OptimizerError.wrapping(
                exc, f"{type(self).__name__}.sparse_step failed on key {key!r} at update {t}:",
                "that table may be partly updated, so fix the optimizer and restart from a checkpoint")
        state[STEP_KEY][...] = t + 1

    # ---- checkpoints ----------------------------------------------------------------------
    def export_state(self, state):
        """Plain host numpy arrays (copies) of ``state``, for checkpoints."""
        return {name: np.array(to_host(a), copy=True) for name, a in state.items()}

    def import_state(self, arrays, like=None):
        """Inverse of ``export_state``.

        Args:
            arrays: mapping of state names to arrays.
            like: optional weight; with a cupy weight the state is moved to its device.

        Returns:
            dict[str, array]: a fresh state dict (copies).

        Raises:
            OptimizerError: the update count ``"t"`` is missing or not a scalar.
        """
        xp = array_module(like) if like is not None else np
        state = {name: xp.array(a, copy=True) for name, a in arrays.items()}
        if STEP_KEY not in state or state[STEP_KEY].shape != ():
            raise OptimizerError(f"optimizer state {sorted(arrays)} has no scalar update count "
                                 f"{STEP_KEY!r}; it was not made by export_state()")
        state[STEP_KEY] = np.array(to_host(state[STEP_KEY]), dtype=np.int64)
        return state

    # ---- the wire -------------------------------------------------------------------------
    def get_config(self):
        """Constructor arguments that rebuild this optimizer (schedules as objects)."""
        return config_from_attributes(self, "optimizer")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def to_spec(opt):
    """``{"name": registered name, "config": msgpack-able dict}`` describing ``opt``.

    Raises:
        OptimizerError: the class is not registered, or a config field cannot be packed by
            msgpack (the message names the field).
    """
    if not isinstance(opt, Optimizer):
        raise OptimizerError(f"{opt!r} is not a psframe.optim.Optimizer")
    name = _registry.name_of(opt)
    return {"name": name,
            "config": _lr.encode_config(opt.get_config(), type(opt).schedule_fields,
                                        type(opt).__name__)}


def from_spec(spec):
    """Build an optimizer from ``to_spec`` output, by registry lookup only (never an import).

    Raises:
        OptimizerError: malformed spec, unregistered name (the message says how to register it),
            or a config the class rejects.
    """
    name, config = check_spec(spec, "optimizer")
    cls = _registry.get(name)
    return build(cls, name, _lr.decode_config(config, cls.schedule_fields), "optimizer")
