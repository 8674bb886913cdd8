"""What a KVStore call's arguments may be: keys (ints or strs), values (arrays, lists of arrays
one per local device, plain numbers), outputs, and what a worker records of each key it
initialised (``KeyInfo``). Pure checks, shared by every kind through ``base.KVStore``."""
import dataclasses

import numpy as np

from .. import arrays
from ..errors import ConfigError, UnsupportedDTypeError


@dataclasses.dataclass
class KeyInfo:
    """What a worker knows of a key it initialised."""
    shape: tuple
    dtype: str
    parts: tuple = ()       # sharding.Part tuple (dist kinds)
    pushes: int = 0         # pushes sent (the step of the next push is pushes + 1)
    acked: int = 0          # pushes whose step the servers completed
    group: object = None    # the fusion.Group it travels in (dist kinds), if any
    member: int = 0         # its index in that group
    part_acked: list = None  # pushes merged, per part (dist kinds, keys cut into parts)
    rows: object = None     # a sparse key: row range bounds per server (rowsparse.row_bounds)

    @property
    def size(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


def is_key(k):
    return isinstance(k, (int, str)) and not isinstance(k, bool)


def _check_key(k):
    if not is_key(k):
        raise ConfigError(f"key {k!r} must be an int or a str (or a list of them)")
    if type(k) is str and k.startswith("\x00"):
        raise ConfigError(f"key {k!r}: keys starting with '\\x00' are reserved for psframe's "
                          f"fused keys; rename it")
    return k


def is_array(v):
    """A numpy, cupy or torch array (anything with a shape and a dtype)."""
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _is_number(v):
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


def _is_numbers(v):
    """A number, or a (nested) list/tuple of numbers: what ``np.asarray`` makes an array of."""
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(_is_numbers(x) for x in v)
    return _is_number(v)


_ACCEPTED = ("pass a numpy/cupy/torch array, a list of them (one per local device, summed), "
             "or plain Python numbers (a number or a list of numbers is one array)")


def _devices(key, v, what, known, output):
    """The list of arrays one key's ``v`` stands for: an array is one entry, a list of arrays is
    one per local device, and plain numbers are one array (of the key's dtype when ``known``
    holds the key and they convert without changing kind)."""
    if is_array(v):
        return [v]
    if isinstance(v, (list, tuple)) and v and all(is_array(x) for x in v):
        return list(v)
    if output:
        raise TypeError(f"{what} of key {key!r}: out must be an array (or a list of arrays, one per "
                        f"local device) to write the value into, not {type(v).__name__}")
    if _is_numbers(v):
        a = np.asarray(v)
        dtype = np.dtype(known[key].dtype) if key in known else None
        if dtype is not None and a.dtype != dtype and np.can_cast(a.dtype, dtype, "same_kind"):
            a = a.astype(dtype)
        return [a]
    held = (f" holding {', '.join(sorted({type(x).__name__ for x in v}))}"
            if isinstance(v, (list, tuple)) and v else "")
    raise TypeError(f"{what} of key {key!r}: cannot use a {type(v).__name__}{held}; {_ACCEPTED}")


def normalise(key, value, what, known=None, output=False):
    """``(keys, per_key_values)``: single key -> one entry; list key -> a list of equal length.
    Each value entry is a list of arrays (one per local device). ``known`` (key -> KeyInfo)
    gives plain Python numbers the key's dtype; ``output``: the values are ``out`` arrays."""
    if isinstance(key, (list, tuple)):
        keys = [_check_key(k) for k in key]
        if not isinstance(value, (list, tuple)) or len(value) != len(keys):
            raise ConfigError(f"{what}: {len(keys)} keys need a list of {len(keys)} values")
        vals = list(value)
    else:
        keys, vals = [_check_key(key)], [value]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{what}: a key appears twice in {keys}")
    known = known or {}
    return keys, [_devices(k, v, what, known, output) for k, v in zip(keys, vals)]


# the ops whose arrays are outputs (written into, so they must be arrays)
PUSHPULL_OUT = "pushpull out"
OUTPUT_OPS = ("pull", PUSHPULL_OUT)


def all_arrays(value):
    """Whether ``value`` (one key's or a list of keys' values) holds arrays only."""
    if type(value) is np.ndarray or is_array(value):
        return True
    return isinstance(value, (list, tuple)) and all(all_arrays(v) for v in value)


def dtype_name(key, a, op):
    try:
        return arrays.dtype_name(a)
    except UnsupportedDTypeError as exc:
        raise UnsupportedDTypeError(exc.dtype, arrays.DTYPES, key=key, op=op) from None
