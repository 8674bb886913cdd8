"""Row-sparse values of sparse keys: ``RowSparse(row_ids, values)``, the checks on row ids, and
the two array operations every side shares (no per-row Python anywhere):

- ``coalesce``: sort the ids and sum the rows of duplicate ids, in the order they were given
  (a stable sort, then ``np.add.reduceat``), so the same input gives the same bits every time;
- ``row_bounds``/``split_by_owner``: a table of ``num_rows`` rows is cut into ``num_servers``
  contiguous, near-equal ranges (server ``s`` owns rows ``bounds[s]..bounds[s + 1] - 1``; the
  first ``num_rows % num_servers`` ranges are one row longer), and sorted ids are cut by owner
  with one ``searchsorted``.
"""
import numpy as np

from .errors import ConfigError, SparseRowError

ID_DTYPE = np.dtype(np.int64)


class RowSparse:
    """Some rows of a sparse key's table: ``values[i]`` is row ``row_ids[i]``.

    Args:
        row_ids: 1-d integer array (int64, or any integer dtype that converts exactly) of row
            indices; duplicates are allowed (their rows are summed when pushed).
        values: array of shape ``(len(row_ids), dim)`` (numpy, or cupy/torch: moved to host).
    """
    __slots__ = ("row_ids", "values")

    def __init__(self, row_ids, values):
        self.row_ids, self.values = row_ids, values

    def __repr__(self):
        return f"RowSparse({len(self.row_ids)} rows of {tuple(getattr(self.values, 'shape', ()))})"


def check_ids(key, row_ids, num_rows, op):
    """``row_ids`` as a contiguous 1-d int64 numpy array, every id in ``[0, num_rows)``.

    Raises:
        SparseRowError: not a 1-d integer array, or an id out of range (names the first one).
    """
    from .arrays import to_host
    ids = to_host(row_ids) if hasattr(row_ids, "dtype") else np.asarray(row_ids)
    if ids.dtype.kind not in "iu" and not (ids.size == 0 and ids.dtype.kind == "f"):
        raise SparseRowError(f"{op} of sparse key {key!r}: row_ids have dtype {ids.dtype}; pass "
                             f"integer row indices as an int64 array (np.asarray(ids, np.int64))")
    if ids.ndim != 1:
        raise SparseRowError(f"{op} of sparse key {key!r}: row_ids have shape {ids.shape}; pass a "
                             f"1-d array of row indices")
    if ids.dtype != ID_DTYPE:
        if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
            raise SparseRowError(f"{op} of sparse key {key!r}: row id {int(ids.max())} is out of "
                                 f"range [0, {num_rows})")
        ids = ids.astype(ID_DTYPE)
    ids = np.ascontiguousarray(ids)
    if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num_rows:
            bad = lo if lo < 0 else hi
            raise SparseRowError(f"{op} of sparse key {key!r}: row id {bad} is out of range "
                                 f"[0, {num_rows}); the table has {num_rows} rows")
    return ids


def check_rows(key, values, count, dim, dtype, op):
    """``values`` as a C-contiguous host array of shape ``(count, dim)`` and ``dtype``.

    Raises:
        SparseRowError: wrong shape or dtype (names both).
    """
    from .arrays import to_host
    rows = to_host(values) if hasattr(values, "dtype") else np.asarray(values, dtype=dtype)
    if rows.shape != (count, dim):
        raise SparseRowError(f"{op} of sparse key {key!r}: values have shape {rows.shape}, but "
                             f"{count} row ids need shape ({count}, {dim})")
    if rows.dtype != np.dtype(dtype):
        raise SparseRowError(f"{op} of sparse key {key!r}: values have dtype {rows.dtype}, the "
                             f"table is {dtype}; convert with .astype({str(dtype)!r})")
    return np.ascontiguousarray(rows)


# a row repeated more than this many times in one push is summed by np.add.reduceat (one
# Python round per repetition level below it; reduceat pays per row instead)
MAX_LEVELS = 32


def coalesce(ids, rows):
    """``(unique sorted ids, summed rows)``: rows of equal ids summed one after the other in
    their given order. Input already sorted and unique is returned as it is."""
    if ids.size <= 1 or bool((ids[1:] > ids[:-1]).all()):
        return ids, rows
    order = np.argsort(ids)              # introsort: an order of magnitude above a stable sort
    sorted_ids = ids[order]
    same = sorted_ids[1:] == sorted_ids[:-1]
    if not same.any():
        return sorted_ids, gather(rows, order)
    order = np.argsort(ids, kind="stable")   # equal ids keep their given order
    sorted_ids, rows = ids[order], gather(rows, order)
    first = np.concatenate(([True], ~same))
    starts = np.flatnonzero(first)
    segment = np.cumsum(first) - 1
    level = np.arange(len(ids)) - starts[segment]      # 0 for a segment's first row, 1, ...
    levels = int(level.max())
    if levels > MAX_LEVELS:
        return sorted_ids[starts], np.add.reduceat(rows, starts, axis=0)
    sums = gather(rows, starts)
    for k in range(1, levels + 1):
        at = np.flatnonzero(level == k)
        where = segment[at]
        sums[where] += gather(rows, at)
    return sorted_ids[starts], sums


def gather(table, idx):
    """``table[idx]`` along rows (``np.take``: several times faster than fancy indexing)."""
    return np.take(table, idx, axis=0)


def scatter(table, idx, rows):
    """``table[idx] = rows`` for unique ``idx``, each row moved as one item (``np.put`` on
    whole-row items: several times faster than fancy assignment)."""
    if not (table.flags.c_contiguous and table.ndim == 2):
        table[idx] = rows
        return
    item = np.dtype((np.void, table.shape[1] * table.itemsize))
    np.put(table.view(item).reshape(-1), idx,
           np.ascontiguousarray(rows, dtype=table.dtype).view(item).reshape(-1))


def unique_ids(ids):
    """``(unique sorted ids, inverse)`` with ``unique[inverse] == ids``; ``inverse`` is None
    when ``ids`` is already sorted and unique."""
    if ids.size <= 1 or bool((ids[1:] > ids[:-1]).all()):
        return ids, None
    uniq, inverse = np.unique(ids, return_inverse=True)
    return uniq, inverse.reshape(-1)


def row_bounds(num_rows, num_servers):
    """Row range starts per server plus the end: server ``s`` owns ``bounds[s]:bounds[s+1]``."""
    if num_servers < 1:
        raise ConfigError(f"a sparse key needs at least one server, got {num_servers}")
    base, extra = divmod(num_rows, num_servers)
    sizes = [base + (1 if s < extra else 0) for s in range(num_servers)]
    return np.concatenate(([0], np.cumsum(sizes, dtype=np.int64))).astype(np.int64)


def split_by_owner(sorted_ids, bounds):
    """Per server ``s``, the ``(start, stop)`` of ``sorted_ids`` it owns."""
    cuts = np.searchsorted(sorted_ids, bounds)
    return [(int(cuts[s]), int(cuts[s + 1])) for s in range(len(bounds) - 1)]
