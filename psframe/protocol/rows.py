"""Validation of the frames of sparse-key messages (no sockets, no state, never pickle).

A ``sparse_push`` carries two arrays: row ids ``int64[n]`` and rows ``dtype[n, dim]``; a
``sparse_pushpull`` a third, the row ids ``int64[m]`` to pull; a ``sparse_pull`` one, the row
ids (or none, with the table's descriptor in ``body.meta``: every row the server holds). Every
array of one message names the same key, part and step. A ``sparse_init`` carries the table in
``body.table`` as ``[dtype, [rows, dim], lo, hi]`` (the rows the server holds), ``body.sync``,
``body.last`` and, with rank 0's rows chunk, ``body.offset`` (the chunk's first row).
"""
from ..errors import ProtocolError
from .codec import ITEMSIZE, as_array

ID_DTYPE = "int64"


def _fail(field, why):
    raise ProtocolError(f"malformed sparse message: {field} {why}")


def _ids(desc, buf, i):
    if desc.dtype != ID_DTYPE or len(desc.shape) != 1:
        _fail(f"arrays[{i}]", f"(row ids of key {desc.key!r}) is {desc.dtype}{list(desc.shape)}, "
                              f"not a 1-d int64 array")
    return as_array(desc, buf)


def row_arrays(msg, pull_ids):
    """``(desc of the rows, ids, rows, ids to pull or None)`` of a push or pushpull message,
    checked: two (three with ``pull_ids``) arrays of one key, part and step, ids ``int64[n]``
    and rows ``[n, dim]``."""
    want = 3 if pull_ids else 2
    if len(msg.arrays) != want:
        _fail("arrays", f"has {len(msg.arrays)} entries, a {msg.cmd.value} carries {want}")
    first = msg.arrays[0]
    for i, d in enumerate(msg.arrays):
        if (d.key, d.part, d.step) != (first.key, first.part, first.step):
            _fail(f"arrays[{i}]", "names another key, part or step than arrays[0]")
    ids = _ids(first, msg.buffers[0], 0)
    rows_desc = msg.arrays[1]
    if len(rows_desc.shape) != 2 or rows_desc.shape[0] != ids.shape[0]:
        _fail("arrays[1]", f"(rows of key {first.key!r}) has shape {list(rows_desc.shape)}, not "
                           f"[{ids.shape[0]}, dim] for {ids.shape[0]} row ids")
    rows = as_array(rows_desc, msg.buffers[1])
    pulled = _ids(msg.arrays[2], msg.buffers[2], 2) if pull_ids else None
    return rows_desc, ids, rows, pulled


def pull_ids(msg):
    """``(desc, ids)`` of a pull: ids ``int64[m]``, or None with ``body.meta``'s one descriptor
    (the whole of the server's rows)."""
    from .codec import decode_meta
    if msg.arrays:
        if len(msg.arrays) != 1:
            _fail("arrays", f"has {len(msg.arrays)} entries, a sparse_pull carries at most 1")
        return msg.arrays[0], _ids(msg.arrays[0], msg.buffers[0], 0)
    meta = decode_meta(msg.body)
    if len(meta) != 1:
        _fail("body.meta", "must name one table when no row ids are sent")
    return meta[0], None


def init_table(msg):
    """``(key, dtype, shape, lo, hi, sync, offset, rows, last)`` of a sparse init, checked."""
    body = msg.body
    table = body.get("table")
    if type(table) is not list or len(table) != 4:
        _fail("body.table", "is not [dtype, [rows, dim], lo, hi]")
    dtype, shape, lo, hi = table
    if dtype not in ITEMSIZE:
        _fail("body.table dtype", f"{dtype!r} is not a supported dtype")
    if (type(shape) is not list or len(shape) != 2 or not all(type(d) is int and d >= 0 for d in shape)
            or type(lo) is not int or type(hi) is not int or not 0 <= lo <= hi <= shape[0]):
        _fail("body.table", f"{table!r}: shape must be [rows, dim] and 0 <= lo <= hi <= rows")
    sync, last, offset = body.get("sync", True), body.get("last", True), body.get("offset")
    if type(sync) is not bool or type(last) is not bool:
        _fail("body.sync/last", "must be bools")
    key = body.get("key")
    if type(key) not in (int, str):
        _fail("body.key", f"{key!r} is not an int or str")
    rows = None
    if msg.arrays:
        desc = msg.arrays[0]
        if (len(msg.arrays) != 1 or type(offset) is not int or desc.key != key or desc.dtype != dtype
                or len(desc.shape) != 2 or desc.shape[1] != shape[1]):
            _fail("arrays", f"a sparse_init carries one {dtype}[n, {shape[1]}] chunk of key "
                            f"{key!r} with an int body.offset")
        rows = as_array(desc, msg.buffers[0])
        if not lo <= offset <= offset + desc.shape[0] <= hi:
            _fail("body.offset", f"rows {offset}..{offset + desc.shape[0]} leave rows {lo}..{hi}")
    return key, dtype, tuple(shape), lo, hi, sync, offset, rows, last

