"""Learning-rate schedules: callables ``schedule(t) -> lr`` of the per-key update index ``t`` (from 0).

Schedules travel to the servers like optimizers, as a registered name plus a msgpack config
(``to_spec`` / ``from_spec``), and users can add their own with ``@psframe.optim.lr.register``.
"""
import bisect
import math
import numbers

from ..errors import OptimizerError
from .registry import Registry, build, check_spec, check_wire_value, config_from_attributes

__all__ = ["Schedule", "Constant", "MultiStep", "Cosine", "Warmup", "scaled_lr", "register",
           "to_spec", "from_spec", "as_schedule"]

_registry = Registry("lr schedule", "@psframe.optim.lr.register")


def register(cls=None, *, name=None):
    """Class decorator registering a ``Schedule`` subclass (name: ``name=`` or lowercase class name).

    Raises:
        OptimizerError: the name is taken by another class.
    """
    return _registry.register(cls, name=name)


class Schedule:
    """Base class of schedules. Subclasses implement ``__call__(t)`` and store each constructor
    argument under its own attribute name (or override ``get_config``).

    Attributes:
        schedule_fields: constructor arguments that hold a nested schedule (sent as a nested spec).
    """
    schedule_fields = ()

    def __call__(self, t):
        raise NotImplementedError

    def get_config(self):
        """Constructor arguments that rebuild this schedule (nested schedules as objects)."""
        return config_from_attributes(self, "lr schedule")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def as_schedule(value, field="lr_schedule"):
    """Return ``value`` as a ``Schedule``: numbers become ``Constant``; ``None`` stays ``None``.

    Raises:
        OptimizerError: ``value`` is neither a number, ``None`` nor callable.
    """
    if value is None or isinstance(value, Schedule):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return Constant(float(value))
    if callable(value):
        return value   # usable locally (worker-side mode); to_spec rejects it by name
    raise OptimizerError(f"{field}={value!r} is not a schedule; pass a number or a "
                         f"psframe.optim.lr schedule such as Warmup(MultiStep(...), steps)")


def encode_config(config, schedule_fields, owner):
    """Make ``config`` msgpack-able: nested schedules -> specs, every field checked.

    Raises:
        OptimizerError: naming the field that cannot go on the wire.
    """
    out = {}
    for field, value in config.items():
        where = f"{owner}.{field}"
        if field in schedule_fields and value is not None:
            if not isinstance(value, Schedule):
                raise OptimizerError(
                    f"config field {where!r} = {value!r} is a plain callable and cannot be sent "
                    f"to the servers; subclass psframe.optim.lr.Schedule and decorate it with "
                    f"@psframe.optim.lr.register")
            value = to_spec(value)
        elif isinstance(value, Schedule):
            raise OptimizerError(
                f"config field {where!r} holds a schedule but is not listed in "
                f"{owner}.schedule_fields; add it there so it travels as a nested spec")
        out[field] = check_wire_value(value, where)
    return out


def decode_config(config, schedule_fields):
    """Inverse of ``encode_config``: nested specs in ``schedule_fields`` -> schedule objects."""
    config = dict(config)
    for field in schedule_fields:
        if isinstance(config.get(field), dict):
            config[field] = from_spec(config[field])
    return config


def to_spec(schedule):
    """``{"name": registered name, "config": msgpack-able dict}`` describing ``schedule``.

    Raises:
        OptimizerError: the class is not registered or a config value cannot go on the wire.
    """
    name = _registry.name_of(schedule)
    return {"name": name,
            "config": encode_config(schedule.get_config(), type(schedule).schedule_fields,
                                    type(schedule).__name__)}


def from_spec(spec):
    """Rebuild a schedule from ``to_spec`` output, through the registry only.

    Raises:
        OptimizerError: malformed spec, unregistered name, or a config the class rejects.
    """
    name, config = check_spec(spec, "lr schedule")
    cls = _registry.get(name)
    return build(cls, name, decode_config(config, cls.schedule_fields), "lr schedule")


def _non_negative(name, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
        raise OptimizerError(f"{name}={value!r} must be a number >= 0")
    return value


@register
class Constant(Schedule):
    """``lr`` at every update.

    Args:
        lr: the learning rate.
    """

    def __init__(self, lr):
        self.lr = _non_negative("lr", lr)

    def __call__(self, t):
        return self.lr


@register
class MultiStep(Schedule):
    """Step decay: ``base_lr * factor ** (number of milestones <= t)``.

    Args:
        base_lr: learning rate before the first milestone.
        milestones: increasing update indices at which the rate is multiplied by ``factor``.
        factor: the multiplier applied at each milestone.
    """

    def __init__(self, base_lr, milestones, factor=0.1):
        self.base_lr = _non_negative("base_lr", base_lr)
        self.milestones = [int(m) for m in milestones]
        if self.milestones != sorted(self.milestones):
            raise OptimizerError(f"milestones={milestones!r} must be increasing")
        self.factor = _non_negative("factor", factor)

    def __call__(self, t):
        return self.base_lr * self.factor ** bisect.bisect_right(self.milestones, t)


@register
class Cosine(Schedule):
    """Cosine decay from ``base_lr`` at ``t=0`` to ``final_lr`` at ``t>=total_steps``:
    ``final_lr + (base_lr - final_lr) * (1 + cos(pi * t / total_steps)) / 2``.

    Args:
        base_lr: rate at update 0.
        total_steps: updates over which the rate decays (> 0).
        final_lr: rate from ``total_steps`` on.
    """

    def __init__(self, base_lr, total_steps, final_lr=0.0):
        self.base_lr = _non_negative("base_lr", base_lr)
        if int(total_steps) <= 0:
            raise OptimizerError(f"total_steps={total_steps!r} must be > 0")
        self.total_steps = int(total_steps)
        self.final_lr = _non_negative("final_lr", final_lr)

    def __call__(self, t):
        t = min(t, self.total_steps)
        cos = (1.0 + math.cos(math.pi * t / self.total_steps)) / 2.0
        return self.final_lr + (self.base_lr - self.final_lr) * cos


@register
class Warmup(Schedule):
    """Gradual warmup (Goyal et al. 2017): linear from ``start_lr`` at ``t=0`` towards
    ``after(steps)``, reached at ``t=steps``; ``after(t)`` from then on.

    Args:
        after: the schedule (or a constant rate) that follows the warmup.
        steps: number of warmup updates (>= 0).
        start_lr: rate at update 0.
    """
    schedule_fields = ("after",)

    def __init__(self, after, steps, start_lr=0.0):
        self.after = as_schedule(after, "after")
        if self.after is None:
            raise OptimizerError("Warmup needs the schedule that follows it: Warmup(after, steps)")
        if int(steps) < 0:
            raise OptimizerError(f"steps={steps!r} must be >= 0")
        self.steps = int(steps)
        self.start_lr = _non_negative("start_lr", start_lr)

    def __call__(self, t):
        if t >= self.steps:
            return self.after(t)
        target = self.after(self.steps)
        return self.start_lr + (target - self.start_lr) * t / self.steps


def scaled_lr(base_lr, global_batch, base_batch=256):
    """Linear scaling rule: ``base_lr * global_batch / base_batch``.

    Args:
        base_lr: rate tuned for ``base_batch``.
        global_batch: the summed batch of all workers per step.
        base_batch: batch size ``base_lr`` was tuned for.

    Returns:
        float: the scaled learning rate, e.g. ``scaled_lr(0.1, 8192) == 3.2``.
    """
    if global_batch <= 0 or base_batch <= 0:
        raise OptimizerError(f"global_batch={global_batch!r} and base_batch={base_batch!r} "
                             f"must be > 0")
    return base_lr * global_batch / base_batch
