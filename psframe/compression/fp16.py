"""fp16 compression: a float32/float64 gradient travels as float16 (round to nearest even) and
is summed in the key's own dtype. No error feedback: the rounding error is dropped, as in
BytePS's and Horovod's fp16 compressors."""
import numpy as np


def encode(grad):
    """``grad`` (numpy or cupy) rounded to float16, as a new array of the same module."""
    return grad.astype(np.float16)


def decode(half, dtype):
    """Float16 values back in ``dtype`` (exact: every float16 is a float32 and float64)."""
    return half.astype(dtype)
