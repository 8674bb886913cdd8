"""Small per-worker state in a checkpoint (data position, epoch, RNG state), without pickle.

A state is a tree of dicts (str keys), lists, str, int, float, bool, None and numpy arrays or
scalars. The tree is kept as JSON in the manifest; each array becomes ``worker-<rank>/<i>.npy``
and its place in the tree ``{"__ndarray__": file record}``. Tuples come back as lists.
"""
import numbers

import numpy as np

from ..errors import CheckpointError

ARRAY_TAG = "__ndarray__"


def write(store, rank, state):
    """Write ``state`` of worker ``rank``; returns its index (JSON-able), or None for None.

    Raises:
        CheckpointError: a value of a type the format does not hold (the message names its path).
    """
    if state is None:
        return None
    folder = f"worker-{rank}"
    arrays = []

    def encode(obj, path):
        if isinstance(obj, np.ndarray) or isinstance(obj, np.generic):
            arrays.append(np.asarray(obj))
            return {ARRAY_TAG: len(arrays) - 1}
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, numbers.Integral):
            return int(obj)
        if isinstance(obj, numbers.Real):
            return float(obj)
        if isinstance(obj, (list, tuple)):
            return [encode(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if not isinstance(k, str) or k == ARRAY_TAG:
                    raise CheckpointError(f"worker_state{path}: key {k!r} is not a str (or is "
                                          f"reserved); use str keys")
                out[k] = encode(v, f"{path}[{k!r}]")
            return out
        raise CheckpointError(f"worker_state{path} is a {type(obj).__name__}; worker_state holds "
                              f"dicts, lists, str, int, float, bool, None and numpy arrays")

    tree = encode(state, "")
    if arrays:
        store.makedirs(folder)
    records = [store.write_array(f"{folder}/{i}.npy", a) for i, a in enumerate(arrays)]
    return {"tree": tree, "arrays": records}


def read(store, index):
    """The state ``write`` stored under ``index`` (None for None)."""
    if index is None:
        return None
    arrays = [store.read_array(r) for r in index["arrays"]]

    def decode(obj):
        if isinstance(obj, dict):
            if set(obj) == {ARRAY_TAG}:
                a = arrays[obj[ARRAY_TAG]]
                return a
            return {k: decode(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        return obj

    return decode(index["tree"])
