"""Gradient compression (fp16, and 2-bit with error feedback) of pushed gradients."""
from .compressor import GradientCompressor, decode, roundtrip
from .spec import CompressionSpec, from_user, from_wire

__all__ = ["CompressionSpec", "GradientCompressor", "decode", "from_user", "from_wire", "roundtrip"]
