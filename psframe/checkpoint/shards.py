"""A server's part of a checkpoint: its stored entries as ``.npy`` files under ``shard-<s>/``.

An entry is what one server stores as one unit: a key-part (a whole small key, one slice of a
big key, or one chunk of it) or a fusion group (small keys in one flat buffer). Its files:

    shard-<s>/<e>.value.npy     the flat value (members one after another)
    shard-<s>/<e>.<j>.npy       optimizer slot j (name in the index): every member's slot
                                array, flattened and concatenated in member order

and its index record (JSON, returned to the caller, kept in the manifest) holds the entry's
key, part, dtype, members and their shapes, completed sync steps per member, and per slot the
shape of each member's array (``null``: that member has no optimizer state yet).
"""
import dataclasses

import numpy as np

from ..errors import CheckpointError
from .files import parallel_map



@dataclasses.dataclass
class EntrySnapshot:
    """Everything one stored entry holds, as plain arrays (what a checkpoint writes and a
    replica would copy). ``value`` is flat; member ``m`` is ``value[bounds[m]:bounds[m + 1]]``.

    Attributes:
        key: wire key of the entry (a user key, or the fused key of a group).
        part: part id (slices and chunks of a big key; 0 otherwise).
        dtype: dtype name of the value.
        members: ``[(user key, shape)]`` in storage order (one for a key-part: its key and the
            part's shape).
        grouped: True for a fusion group.
        sync: dist_sync (True) or dist_async (False) semantics.
        completed: per member, the number of steps applied.
        value: the flat value (not copied: write it before the shard changes).
        slots: optimizer state, ``{slot name: [array or None per member]}``.
    """
    key: object
    part: int
    dtype: str
    members: list
    grouped: bool
    sync: bool
    completed: list
    value: np.ndarray
    slots: dict

    @property
    def bounds(self):
        return member_bounds(self.members)


def member_bounds(members):
    """Flat offsets of members ``[(key, shape)]``: member m spans ``[b[m], b[m + 1])``."""
    b = [0]
    for _, shape in members:
        b.append(b[-1] + size_of(shape))
    return b


def size_of(shape):
    """Elements of ``shape`` (plain ints: a group has hundreds of members, np.prod costs µs each)."""
    n = 1
    for d in shape:
        n *= d
    return n


def write_shard(store, server, entries):
    """Write ``entries`` (``EntrySnapshot`` list) of server ``server`` to ``store`` in parallel.

    Returns:
        dict: ``{"server": server, "entries": [index record per entry]}`` (JSON-able).

    Raises:
        CheckpointError: a write failed, or optimizer state is inconsistent across members.
    """
    folder = f"shard-{server}"
    store.makedirs(folder)
    jobs, records = [], []
    for e, entry in enumerate(entries):
        rec = {"key": entry.key, "part": entry.part, "dtype": entry.dtype, "grouped": entry.grouped,
               "sync": entry.sync, "members": [[k, list(s)] for k, s in entry.members],
               "completed": [int(c) for c in entry.completed], "slots": {}}
        jobs.append((rec, "value", f"{folder}/{e}.value.npy", entry.value))
        for j, (name, arrays) in enumerate(sorted(entry.slots.items())):
            present = [a for a in arrays if a is not None]
            dtypes = {a.dtype.str for a in present}
            if len(dtypes) > 1:
                raise CheckpointError(f"optimizer slot {name!r} of key {entry.key!r} has dtypes "
                                      f"{sorted(dtypes)} across fused keys; cannot store it as one array")
            flat = (np.concatenate([np.ascontiguousarray(a).reshape(-1) for a in present])
                    if len(present) > 1 else np.ascontiguousarray(present[0]).reshape(-1)
                    if present else np.zeros(0, np.float32))
            slot = {"shapes": [None if a is None else list(a.shape) for a in arrays]}
            rec["slots"][name] = slot
            jobs.append((slot, "file", f"{folder}/{e}.{j}.npy", flat))
        records.append(rec)
    written = parallel_map(lambda job: store.write_array(job[2], job[3]), jobs, store.threads)
    for (target, field, _, _), record in zip(jobs, written):
        target[field] = record
    return {"server": server, "entries": records}
