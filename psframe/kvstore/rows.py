"""Outgoing messages of sparse keys: a table's rows are cut into one contiguous range per server
(``KeyInfo.rows``), and a call sends one message to each server whose range it names.

In ``dist_sync`` a push also goes, with no rows, to the servers owning none of its rows: a
server completes step i of a table once it has every worker's i-th push, so each must hear of
each push (a header and two empty frames). ``dist_async`` contacts only the owners. Every
message of a sparse key travels on the server's TCP lane, so they arrive in the order sent.
"""
from ..protocol import ArrayDesc, Command
from ..rowsparse import split_by_owner
from .requests import Ack
from .routes import MESSAGE_BYTES, Batch

# rank 0's init chunks in flight at once (about MESSAGE_BYTES each): what a server may have to
# hold beyond its rows while a table arrives
INIT_WINDOW = 8


def lane(server):
    return server, False


def init_messages(key, info, table, rank, sync):
    """``[(server, Batch, body)]``: rank 0 sends each server its rows in chunks of about
    ``MESSAGE_BYTES`` (the last one says so); other workers send one declaration each."""
    bounds, dim = info.rows, info.shape[1]
    chunk_rows = max(1, MESSAGE_BYTES // max(1, dim * table.dtype.itemsize))
    out = []
    for s in range(len(bounds) - 1):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        head = {"key": key, "table": [info.dtype, list(info.shape), lo, hi], "sync": sync}
        if rank != 0 or lo == hi:
            out.append((s, Batch(), dict(head, last=True)))
            continue
        for start in range(lo, hi, chunk_rows):
            stop = min(hi, start + chunk_rows)
            batch = Batch()
            batch.descs.append(ArrayDesc(key, s, info.dtype, (stop - start, dim)))
            batch.bufs.append(table[start:stop])
            out.append((s, batch, dict(head, offset=start, last=stop == hi)))
    return out


def push_messages(key, info, ids, rows, pull_ids, land, sync):
    """``[(server, command, Batch)]`` of a push (``pull_ids`` None) or pushpull: each server
    gets its rows (sync: every server, maybe none), a pushpull also the ids it pulls, whose
    rows land in ``land`` (rows of ``pull_ids``, in order)."""
    own = split_by_owner(ids, info.rows)
    pulls = split_by_owner(pull_ids, info.rows) if pull_ids is not None else None
    out = []
    for s, (a, b) in enumerate(own):
        pa, pb = pulls[s] if pulls is not None else (0, 0)
        if not sync and a == b and pa == pb:
            info.part_acked[s] += 1       # nothing for this server: counted as merged
            continue
        batch = Batch()
        batch.descs += [ArrayDesc(key, s, "int64", (b - a,), info.pushes),
                        ArrayDesc(key, s, info.dtype, (b - a, info.shape[1]), info.pushes)]
        batch.bufs += [ids[a:b], rows[a:b]]
        batch.acks.append(Ack(key, info, s))
        cmd = Command.SPARSE_PUSH
        if pulls is not None:
            cmd = Command.SPARSE_PUSHPULL
            batch.descs.append(ArrayDesc(key, s, "int64", (pb - pa,), info.pushes))
            batch.bufs.append(pull_ids[pa:pb])
            if pb > pa:
                batch.targets[(key, s)] = land[pa:pb]
        out.append((s, cmd, batch))
    info.acked = min(info.part_acked)
    return out


def pull_messages(key, info, ids, land):
    """``[(server, Batch, body)]`` of a pull of rows ``ids`` (sorted, unique; None: the whole
    table) into ``land``: only the servers owning some of them."""
    out = []
    if ids is None:
        bounds = info.rows
        for s in range(len(bounds) - 1):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            if lo < hi:
                batch = Batch()
                batch.targets[(key, s)] = land[lo:hi]
                desc = ArrayDesc(key, s, info.dtype, (hi - lo, info.shape[1]), info.pushes)
                out.append((s, batch, {"meta": [desc.to_wire()]}))
        return out
    for s, (a, b) in enumerate(split_by_owner(ids, info.rows)):
        if a < b:
            batch = Batch()
            batch.descs.append(ArrayDesc(key, s, "int64", (b - a,), info.pushes))
            batch.bufs.append(ids[a:b])
            batch.targets[(key, s)] = land[a:b]
            out.append((s, batch, None))
    return out

