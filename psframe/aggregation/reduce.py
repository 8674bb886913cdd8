"""Fixed-order summation of a list of arrays, on the arrays' own device (cupy) or host (numpy).

The order is the list order (device 0 first), so results are bitwise reproducible.
"""
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
