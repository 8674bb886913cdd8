"""The worker side of gradient compression: one error-feedback residual per stored entry, and
the encode/decode pair between a gradient and its wire bytes.

An entry is what the servers store: a key (its residual covers every part of it, so each
key-part has its own slice) or a fusion group (a member pushed alone uses its slice of the
group's residual, so a key's residual is the same whichever way it travels).
"""
import numpy as np

from .. import arrays
from . import fp16, twobit


class GradientCompressor:
    """A worker's compression (``spec``) and its residuals.

    Args:
        spec: a ``CompressionSpec``.
    """

    def __init__(self, spec):
        self.spec = spec
        self._residuals = {}          # entry -> flat residual (numpy or cupy), entry's dtype
        self._scratch = twobit.Scratch()

    def applies_to(self, dtype):
        return self.spec.applies_to(dtype)

    def residual(self, entry, size, like):
        """The flat residual of ``entry`` (``size`` elements), made zero on first use in the
        module and dtype of ``like``."""
        res = self._residuals.get(entry)
        xp = twobit.array_module(like)
        if res is None or res.dtype != like.dtype:
            res = self._residuals[entry] = xp.zeros(size, dtype=like.dtype)
        elif twobit.array_module(res) is not xp:      # the key moved between host and device
            res = self._residuals[entry] = xp.asarray(arrays.to_host(res)) if xp is not np else arrays.to_host(res)
        return res

    def encode(self, entry, size, flat, start=0):
        """Wire bytes of ``flat``: elements ``[start, start + flat.size)`` of ``entry`` (of
        ``size`` elements). Returns a host uint8 array (device data is compressed on the
        device, then only the compressed bytes are copied)."""
        if self.spec.type == "fp16":
            out = fp16.encode(flat)
        else:
            res = self.residual(entry, size, flat)[start:start + flat.size]
            out = twobit.quantize(flat, res, self.spec.threshold, self._scratch)
        return arrays.to_host(out).reshape(-1).view(np.uint8)


def decode(spec, dtype, shape, buffer):
    """A received compressed array back in the key's ``dtype`` and ``shape``: a new writable
    host array (the servers then sum it as any push).

    Args:
        spec: the ``CompressionSpec`` the message header names.
        dtype, shape: the key-part's, as its array descriptor declares them.
        buffer: the frame (exactly ``spec.wire_nbytes(size)`` bytes, checked by the codec).
    """
    size = 1
    for d in shape:
        size *= d
    if spec.type == "fp16":
        flat = fp16.decode(np.frombuffer(buffer, np.float16), dtype)
    else:
        flat = twobit.dequantize(np.frombuffer(buffer, np.uint8), size, spec.threshold, dtype)
    return flat.reshape(shape)


ROUNDTRIP_ELEMENTS = 1 << 20     # pieces as big as the dist kinds' chunks: bounded temporaries


def roundtrip(compressor, entry, size, flat, start=0):
    """What the servers would sum for this push: ``decode(encode(flat))``, piece by piece (the
    local kind)."""
    dtype = arrays.dtype_name(flat)
    pieces = []
    for lo in range(0, flat.size, ROUNDTRIP_ELEMENTS):
        piece = flat[lo:lo + ROUNDTRIP_ELEMENTS]
        wire = compressor.encode(entry, size, piece, start + lo)
        pieces.append(decode(compressor.spec, dtype, (piece.size,), wire))
    if len(pieces) == 1:
        return pieces[0]
    return np.concatenate(pieces) if pieces else flat.copy()

