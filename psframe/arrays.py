"""The array-backend shim: allowed dtypes, host buffers out of numpy/cupy/torch values, and
copies into a caller's ``out``. cupy and torch are imported only when such a value shows up."""
import importlib
import sys

import numpy as np

from .errors import UnsupportedDTypeError

DTYPES = ("float16", "float32", "float64", "int32", "int64")


def backend(value):
    """'numpy', 'cupy' or 'torch', from the value's type (no import of either package)."""
    mod = type(value).__module__.split(".")[0]
    if mod == "cupy":
        return "cupy"
    if mod == "torch":
        return "torch"
    return "numpy"


def array_module(value):
    """The array module of ``value``: ``cupy`` for cupy arrays, else ``numpy`` (cupy is
    imported only when given one)."""
    if backend(value) == "cupy":
        return sys.modules.get("cupy") or importlib.import_module("cupy")
    return np


# numpy's dtype.name is computed in Python (~10 us); keys are few, calls are many.
_NAMES = {np.dtype(n): n for n in DTYPES}


def dtype_name(value):
    """The wire name of ``value``'s dtype; raises UnsupportedDTypeError for anything else."""
    name = _NAMES.get(value.dtype) if backend(value) != "torch" else None
    if name is not None:
        return name
    if backend(value) == "torch":
        name = str(value.dtype).replace("torch.", "")
    else:
        name = np.dtype(value.dtype).name
    if name not in DTYPES:
        raise UnsupportedDTypeError(name, DTYPES)
    return name


def to_host_copied(value):
    """``(host, copied)``: a C-contiguous numpy array with ``value``'s data and shape (0-d stays
    0-d), and whether it is a copy (device data, or a non-contiguous layout). When ``copied``
    is False the host array shares the caller's memory, so a zero-copy send must be waited for
    before the caller may write to it again."""
    kind = backend(value)
    if kind == "cupy":
        return value.get(), True   # device -> host: the one copy the transfer needs
    if kind == "torch":
        value = value.detach()
        copied = value.device.type != "cpu" or not value.is_contiguous()
        return value.cpu().contiguous().numpy(), copied
    host = np.require(value, requirements="C")
    return host, host is not value


def to_host(value):
    """A C-contiguous numpy view of ``value`` (a copy only where the data lives on a device or
    is not contiguous). Scalars and lists become arrays."""
    return to_host_copied(value)[0]


def host_view(out):
    """A numpy array sharing memory with ``out`` when ``out`` is a CPU array (numpy or cpu
    torch tensor), else None (the caller receives into a temporary and copies)."""
    kind = backend(out)
    if kind == "numpy":
        return out if out.flags.c_contiguous and out.flags.writeable else None
    if kind == "torch" and out.device.type == "cpu" and out.is_contiguous():
        return out.detach().numpy()
    return None


def copy_into(out, src):
    """Copy host array ``src`` into ``out`` (numpy, cupy or torch), in place."""
    kind = backend(out)
    if kind == "numpy":
        np.copyto(out, src.reshape(out.shape), casting="no")
    elif kind == "cupy":
        out.set(src.reshape(out.shape))
    else:
        torch = sys.modules["torch"]
        out.copy_(torch.from_numpy(np.ascontiguousarray(src).reshape(tuple(out.shape))))


def shape_of(value):
    return tuple(int(d) for d in value.shape)
