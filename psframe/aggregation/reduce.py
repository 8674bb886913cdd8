"""Fixed-order summation of a list of arrays, on the arrays' own device (cupy) or host (numpy).

The order is the list order (device 0 first), so results are bitwise reproducible.
"""
import numpy as np

from .. import arrays


def sum_arrays(values):
    """Sum ``values`` (same shape/dtype) in list order; one array is returned as it is.
    cupy arrays are summed on their device, so only the sum crosses to the host."""
    if len(values) == 1:
        return values[0]
    first = values[0]
    kind = arrays.backend(first)
    if kind == "torch":
        total = first.detach().clone()
        for v in values[1:]:
            total.add_(v.to(total.device))
        return total
    if kind == "cupy":
        import cupy
        total = cupy.array(first, copy=True)
        for v in values[1:]:
            cupy.add(total, cupy.asarray(v), out=total)
        return total
    total = arrays.to_host(first).copy()
    for v in values[1:]:
        total += arrays.to_host(v)
    return total


def sum_in_order(parts):
    """Sum host arrays ``parts`` into ``parts[0]`` in list order (the host tier's local-rank
    order): ``((p0 + p1) + p2) + ...``, the same operations a server does when it sums the
    pushes of one host, so both give the same bits. Returns ``parts[0]``."""
    total = parts[0]
    for p in parts[1:]:
        np.add(total, p, out=total)
    return total


class SumOnSend:
    """Host sums done one message at a time: ``summed_later`` maps a key to its host arrays in
    local-rank order; called with a message about to be sent (its ``descs`` and ``bufs``, each
    buf a slice of a key's first array), it adds the same slice of the others into it, in
    order. Each element gets the additions ``sum_in_order`` makes, so the bits are the same;
    the sum of one message overlaps the sending of the one before."""

    def __init__(self, summed_later):
        self.parts = {k: [p.reshape(-1) for p in parts] for k, parts in summed_later.items()}

    def __call__(self, batch):
        for desc, buf in zip(batch.descs, batch.bufs):
            parts = self.parts.get(desc.key)
            if parts is None:
                continue
            first = parts[0]
            start = (buf.ctypes.data - first.ctypes.data) // first.itemsize
            stop = start + buf.size
            if not (0 <= start and stop <= first.size and buf.dtype == first.dtype):
                raise RuntimeError(f"host tier: a message's array of key {desc.key!r} is not a "
                                   f"slice of its first worker's slot")
            for p in parts[1:]:
                np.add(buf, p[start:stop], out=buf)


def copy_to_host(slot, value):
    """Copy ``value`` (numpy, cupy on its device, or torch) into host array ``slot``: the one
    device-to-host copy a worker's (device-summed) gradient needs to reach the host tier."""
    kind = arrays.backend(value)
    if kind == "cupy":
        value.get(out=slot)
    elif kind == "torch":
        import torch
        torch.from_numpy(slot).copy_(value.detach().reshape(slot.shape))
    else:
        np.copyto(slot, np.asarray(value).reshape(slot.shape), casting="no")


def pin(segment):
    """Page-lock a host segment for faster device copies where cupy and a device exist; a no-op
    (False) elsewhere. Segments stay mapped until the process exits, so nothing unregisters."""
    try:
        import cupy
        ptr = segment.buffer.ctypes.data
        cupy.cuda.runtime.hostRegister(ptr, segment.size, 0)
        return True
    except Exception:     # no cupy, no device, or the driver refuses: plain pageable memory
        return False
