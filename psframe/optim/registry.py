"""Name -> class registries and the ``{"name", "config"}`` spec codec shared by optimizers and schedules.

A registry is the only way a name that arrived over the wire turns into code: a spec names a class
that the job's own code registered; nothing is ever imported by name, unpickled or evaluated.
"""
import inspect
import logging

import msgpack
import numpy as np

from ..errors import OptimizerError

logger = logging.getLogger(__name__)

# Built-in classes live here; a user class of the same qualified name must not silently replace them.
_PROTECTED_PREFIX = "psframe."


class Registry:
    """Maps lowercase names to classes.

    Args:
        kind: what the registry holds, used in messages ("optimizer", "lr schedule").
        decorator: how users spell the decorator, used in messages.
    """

    def __init__(self, kind, decorator):
        self.kind = kind
        self.decorator = decorator
        self._classes = {}

    def register(self, cls=None, *, name=None):
        """Class decorator: register ``cls`` under ``name``.

        The name is ``name=`` if given, else a ``name`` attribute defined in the class body, else
        the lowercase class name. Usable bare (``@register``) or called (``@register(name="x")``).

        Raises:
            OptimizerError: another class is already registered under that name.
        """
        if cls is None:
            return lambda c: self.register(c, name=name)
        if not inspect.isclass(cls):
            raise OptimizerError(f"{self.decorator} decorates a class, got {cls!r}")
        reg_name = (name or cls.__dict__.get("name") or cls.__name__).lower()
        if not isinstance(reg_name, str) or not reg_name:
            raise OptimizerError(f"{self.kind} name must be a non-empty string, got {reg_name!r}")
        old = self._classes.get(reg_name)
        if old is not None and old is not cls:
            # The same definition seen twice (a script run as __main__ on workers and imported as a
            # module on servers, or a re-run notebook cell) replaces quietly; anything else clashes.
            same = (old.__qualname__ == cls.__qualname__
                    and not old.__module__.startswith(_PROTECTED_PREFIX))
            if not same:
                raise OptimizerError(
                    f"{self.kind} name {reg_name!r} is already registered by "
                    f"{old.__module__}.{old.__qualname__}; register "
                    f"{cls.__module__}.{cls.__qualname__} under another name with "
                    f"{self.decorator}(name='...')")
            logger.debug("%s %r re-registered by %s.%s", self.kind, reg_name, cls.__module__,
                         cls.__qualname__)
        self._classes[reg_name] = cls
        # _registered_by is checked through cls.__dict__, so a subclass never inherits a name
        cls._registered_name = reg_name
        cls._registered_by = cls
        return cls

    def get(self, name):
        """Return the class registered as ``name``.

        Raises:
            OptimizerError: no class is registered under ``name``.
        """
        cls = self._classes.get(name) if isinstance(name, str) else None
        if cls is None:
            raise OptimizerError(
                f"unknown {self.kind} {name!r} (registered: {', '.join(sorted(self._classes))}). "
                f"Define the class in a file, decorate it with {self.decorator}, and make sure "
                f"every process imports that file: servers import the files listed in "
                f"PSFRAME_USER_MODULES, which `psframe-launch --optimizer-module FILE` sets")
        return cls

    def names(self):
        """Sorted registered names."""
        return sorted(self._classes)

    def name_of(self, obj):
        """Registered name of ``obj``'s class.

        Raises:
            OptimizerError: the class (not just a base class) is not registered.
        """
        cls = type(obj)
        if cls.__dict__.get("_registered_by") is not cls:
            raise OptimizerError(
                f"{self.kind} class {cls.__module__}.{cls.__qualname__} is not registered, so it "
                f"cannot be sent to the servers; decorate it with {self.decorator}")
        return cls._registered_name


def constructor_params(cls):
    """Names of the keyword parameters of ``cls.__init__`` and of its bases' ``__init__``.

    ``**kwargs`` of a subclass are assumed to be forwarded to ``super().__init__``, whose named
    parameters are then collected too (as Keras's ``get_config`` does by hand).
    """
    names = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        forwards = False
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                if p.name not in names:
                    names.append(p.name)
            elif p.kind is p.VAR_KEYWORD:
                forwards = True
        if not forwards:
            break
    return names


def config_from_attributes(obj, kind):
    """Read every constructor parameter of ``obj`` back from the attribute of the same name.

    Raises:
        OptimizerError: a parameter has no attribute of that name.
    """
    config = {}
    for name in constructor_params(type(obj)):
        if not hasattr(obj, name):
            raise OptimizerError(
                f"{kind} {type(obj).__qualname__} takes {name!r} but has no attribute "
                f"self.{name}; store each constructor argument under its own name, or override "
                f"get_config() to return the constructor's arguments")
        config[name] = getattr(obj, name)
    return config


def check_wire_value(value, where):
    """Return ``value`` converted to plain msgpack types (numpy scalars -> Python scalars).

    Raises:
        OptimizerError: naming ``where`` (the config field) when the value cannot go on the wire.
    """
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, (list, tuple)):
        value = [check_wire_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    elif isinstance(value, dict):
        value = {k: check_wire_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    try:
        msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise OptimizerError(
            f"config field {where!r} = {value!r} ({type(value).__name__}) cannot be sent to the "
            f"servers ({exc}); use numbers, strings, booleans, None, lists or dicts of those, "
            f"or a registered lr schedule") from None
    return value


def check_spec(spec, kind):
    """Validate the shape of a spec that may have come off the wire; return ``(name, config)``.

    Raises:
        OptimizerError: the spec is not ``{"name": str, "config": {str: ...}}``.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
            or not isinstance(spec.get("config", {}), dict):
        raise OptimizerError(f"malformed {kind} spec {spec!r}: expected "
                             f"{{'name': str, 'config': dict}} as made by to_spec()")
    config = spec.get("config", {})
    bad = [k for k in config if not isinstance(k, str)]
    if bad:
        raise OptimizerError(f"{kind} spec {spec['name']!r} has non-string config keys {bad!r}")
    return spec["name"], config


def build(cls, name, config, kind):
    """Call ``cls(**config)``, turning any failure into an ``OptimizerError`` naming the spec."""
    try:
        return cls(**config)
    except OptimizerError:
        raise
    except Exception as exc:  # user constructors may raise anything; the server must go on
        raise OptimizerError(f"{kind} {name!r} rejected its config {config!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
