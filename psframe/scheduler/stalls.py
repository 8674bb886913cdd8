"""Stall diagnosis: from every worker's call record (``psframe.kvstore.call_record``), say who
is behind and where, when a blocking call has waited longer than ``PSFRAME_STALL_TIMEOUT``.

Pure: records in, ``Stall`` out. A record is what a worker's heartbeat carried:
``{"call": [name, keys text, step, seconds in it, collective names], "last": [[name, keys,
step], ...], "counts": {"init:'big'": 1, "set_optimizer": 1, ...}}``; ``call`` is absent between
calls, and its collective names (``["init:'big'"]``, ``["barrier"]``) are empty for a call that
is not a collective.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Stall:
    report: str          # one paragraph naming the waiting ranks, the call, and who is behind
    blamed: int = None   # the rank to name as the root cause (None: no rank is behind)


def _where(call):
    name, keys, step = call[:3]
    text = f"{name}({keys})" if keys else f"{name}()"
    return f"{text[:-1]}, step {step})" if step is not None else text


def _ranks(ranks):
    ranks = sorted(ranks)
    return f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}"


def diagnose(records, stall_timeout, finished=()):
    """The ``Stall`` of the job, or None while no call has waited ``stall_timeout`` s.

    Args:
        records: rank -> record (every worker that has sent one and is still running).
        stall_timeout: seconds a blocking call may wait before it is a stall.
        finished: ranks that already ended (done): a step waiting on them cannot complete.
    """
    waiting = {r: rec["call"] for r, rec in records.items()
               if rec.get("call") and rec["call"][3] >= stall_timeout}
    if not waiting:
        return None
    groups = {}
    for rank, call in waiting.items():
        groups.setdefault(tuple(call[:3]), []).append(rank)
    # the longest wait first: that call is the one the others are not making
    first = max(groups, key=lambda g: max(waiting[r][3] for r in groups[g]))
    waiters = groups[first]
    seconds = max(waiting[r][3] for r in waiters)
    parts = [f"{_ranks(waiters)} {'have' if len(waiters) > 1 else 'has'} waited "
             f"{seconds:.0f} s in {_where(first)}"]
    need = waiting[waiters[0]][4]
    have = max(records[r].get("counts", {}).get(need[0], 0) for r in waiters) if need else 0
    behind = []
    for rank in sorted(records):
        if rank in waiters:
            continue
        rec = records[rank]
        count = min((rec.get("counts", {}).get(n, 0) for n in need), default=0)
        where = f"is in {_where(rec['call'])}" if rec.get("call") else (
            f"is between calls (last: {_where(rec['last'][-1])})" if rec.get("last")
            else "has made no call yet")
        if count < have:
            what = _where(first[:2] + (None,))
            never = f"never called {what}" if count == 0 else \
                f"called {what} {count} of {have} times"
            parts.append(f"rank {rank} {where} and {never}")
            behind.append(rank)
        else:
            parts.append(f"rank {rank} {where}")
    for rank in sorted(finished):
        parts.append(f"rank {rank} has finished (closed its KVStore) and will not call "
                     f"{_where(first[:2] + (None,))}")
        behind.append(rank)
    if not behind and len(groups) == 1 and len(waiters) == len(records) and not finished:
        parts.append("every worker waits in the same call: a server is not answering (see the "
                     "servers' logs) or the call's timeout is longer than the stall timeout")
    report = "stall: " + "; ".join(parts) + (
        f" (PSFRAME_STALL_TIMEOUT={stall_timeout:g}). Every rank must make the same collective "
        "calls (init, set_optimizer, barrier, checkpoints) and push the same number of steps; "
        "a worker that runs out of data early should call kv.join()")
    return Stall(report, behind[0] if behind else None)
