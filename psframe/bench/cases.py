"""What the bench measures: sizes, the many-small-keys case and model-shaped parameter lists."""

UNITS = {"b": 1, "kib": 1024, "kb": 1000, "mib": 1024 ** 2, "mb": 1000 ** 2, "gib": 1024 ** 3}


def parse_size(text):
    """``'4KiB'`` -> 4096, ``'100MiB'`` -> 104857600, ``'512'`` -> 512.

    Raises:
        ValueError: not a size.
    """
    t = text.strip().lower()
    for unit in sorted(UNITS, key=len, reverse=True):
        if t.endswith(unit) and t[:-len(unit)].strip():
            return int(float(t[:-len(unit)]) * UNITS[unit])
    return int(t)


def parse_sizes(text):
    """A comma list of sizes (``'16MiB,100MiB'``; ``''`` is none).

    Raises:
        ValueError: an entry is not a size, or not positive.
    """
    sizes = [parse_size(s) for s in text.split(",") if s.strip()]
    if any(n <= 0 for n in sizes):
        raise ValueError(f"sizes must be positive, got {text!r}; pass an empty list ('') to skip a job")
    return sizes


def format_size(nbytes):
    for unit, scale in (("MiB", 1024 ** 2), ("KiB", 1024)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    if nbytes >= 1024 ** 2:
        return f"{nbytes / 1024 ** 2:.1f} MiB"
    return f"{nbytes} B"


def resnet50_shapes():
    """Parameter shapes of torchvision's ResNet-50 (161 tensors, 25,557,032 parameters)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,)]
            if b == 0:
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    return shapes + [(1000, 2048), (1000,)]


def scaled(shapes, scale):
    """``shapes`` with every tensor's first dimension scaled (>= 1): small models for tests."""
    if scale == 1:
        return [tuple(s) for s in shapes]
    return [(max(1, int(s[0] * scale)), *s[1:]) for s in shapes]


def elements(shape):
    n = 1
    for d in shape:
        n *= d
    return n


ROUND_BYTES = 256 << 20    # a small case runs more rounds, up to this much payload ...
MAX_ROUNDS_FACTOR = 20     # ... and this many times ``--rounds``


def rounds_for(nbytes, rounds):
    """Timed rounds of a case of ``nbytes``: at least ``rounds``, more for small payloads (a
    1 MiB round takes about a millisecond, so ten of them are at the mercy of one burst of
    load on a shared machine)."""
    return max(rounds, min(MAX_ROUNDS_FACTOR * rounds, ROUND_BYTES // max(nbytes, 1)))


def size_case(nbytes, ops, stats=False):
    """One float32 key of ``nbytes``."""
    return {"label": f"size-{nbytes}", "kind": "size", "nbytes": nbytes,
            "shapes": [[max(1, nbytes // 4)]], "ops": list(ops), "stats": stats}


def keys_case(count, key_bytes, ops):
    """``count`` float32 keys of ``key_bytes`` each, pushed and pulled as one list."""
    return {"label": f"keys-{count}x{key_bytes}", "kind": "keys", "nbytes": count * key_bytes,
            "shapes": [[max(1, key_bytes // 4)]] * count, "ops": list(ops)}


def model_case(name, shapes, ops):
    total = sum(elements(s) for s in shapes)
    return {"label": f"model-{name}", "kind": "model", "nbytes": 4 * total,
            "shapes": [list(s) for s in shapes], "ops": list(ops), "tensors": len(shapes)}


def one_key_case(label, nbytes, ops):
    case = size_case(nbytes, ops)
    case["label"] = label
    case["kind"] = "onekey"
    return case


def sparse_cases(rows, dim, fraction, ops):
    """A sparse float32 table of ``rows x dim`` whose pushpull names ``fraction`` of its rows
    (each worker its own random rows every round), a dense key of the whole table, and a dense
    key of just the bytes those rows hold: the sparse key's two baselines."""
    touched = max(1, int(rows * fraction))
    sparse = {"label": f"sparse-{rows}x{dim}-{fraction:g}", "kind": "sparse", "rows": rows, "dim": dim,
              "touched": touched, "nbytes": touched * dim * 4, "ops": list(ops)}
    return [sparse, one_key_case(f"dense-table-{rows}x{dim}", rows * dim * 4, ops),
            one_key_case(f"dense-touched-{touched}x{dim}", touched * dim * 4, ops)]
