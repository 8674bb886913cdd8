"""What a gradient compression is: its type and threshold, checked once where it enters
(the user's dict, or a message header), and the bytes a compressed array takes on the wire.

Compression applies to pushed gradients of float keys only; int keys, inits and pulls always
travel as they are.
"""
import dataclasses
import math

from ..errors import ConfigError, ProtocolError

TYPES = ("fp16", "2bit")
FLOAT_DTYPES = ("float16", "float32", "float64")
DEFAULT_THRESHOLD = 0.5          # MXNet's default for 2bit
ELEMENTS_PER_WORD = 16           # 2bit: 16 two-bit codes in one 32-bit word


@dataclasses.dataclass(frozen=True)
class CompressionSpec:
    """A validated compression config. ``threshold`` is 0.0 for fp16."""
    type: str
    threshold: float = 0.0

    def applies_to(self, dtype):
        """Whether a pushed array of ``dtype`` travels compressed (fp16 of a float16 key would
        change nothing, so it goes as it is)."""
        return dtype in FLOAT_DTYPES and not (self.type == "fp16" and dtype == "float16")

    def wire_nbytes(self, size):
        """Bytes ``size`` elements take on the wire: 2 each for fp16; for 2bit one 4-byte word
        per 16 elements (the last word zero-padded)."""
        if self.type == "fp16":
            return 2 * size
        return 4 * -(-size // ELEMENTS_PER_WORD)

    def to_wire(self):
        """The msgpack-able map a message header carries (also the user-facing form)."""
        if self.type == "fp16":
            return {"type": "fp16"}
        return {"type": "2bit", "threshold": self.threshold}


def from_user(config):
    """The spec of ``kv.set_gradient_compression(config)``; None for ``{"type": "none"}``.

    Raises:
        ConfigError: not a dict, an unknown type or key, or a threshold that is not a finite
            number above 0.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"gradient compression config {config!r} must be a dict such as "
                          f'{{"type": "2bit", "threshold": 0.5}} or {{"type": "fp16"}}')
    kind = config.get("type")
    if kind == "none":
        extra = set(config) - {"type"}
    elif kind in TYPES:
        extra = set(config) - ({"type", "threshold"} if kind == "2bit" else {"type"})
    else:
        raise ConfigError(f"gradient compression type {kind!r} is not one of "
                          f"{', '.join(repr(t) for t in (*TYPES, 'none'))}")
    if extra:
        raise ConfigError(f"gradient compression {kind!r} takes no {', '.join(sorted(map(str, extra)))}; "
                          f"valid keys: 'type'" + (", 'threshold'" if kind == "2bit" else ""))
    if kind == "none":
        return None
    if kind == "fp16":
        return CompressionSpec("fp16")
    threshold = config.get("threshold", DEFAULT_THRESHOLD)
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold) or threshold <= 0):
        raise ConfigError(f"2bit threshold {threshold!r} must be a finite number above 0 "
                          f"(gradient elements at or above it are sent as +threshold)")
    return CompressionSpec("2bit", float(threshold))


def from_wire(raw):
    """The spec in a message header's ``compression`` field.

    Raises:
        ProtocolError: naming what is malformed.
    """
    try:
        if not isinstance(raw, dict) or raw.get("type") not in TYPES:
            raise ConfigError(f"{raw!r}")
        return from_user(raw)
    except ConfigError as exc:
        raise ProtocolError(f"malformed message: compression {exc}") from None
