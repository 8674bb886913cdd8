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
    deadlocked: bool = False   # a rank is behind and every running rank is blocked in a call:
                               # nothing can move (a rank that computes may still come)
    signature: tuple = ()      # what the stall is, without its durations (reported once)


def _where(call):
    name, keys, step = call[:3]
    text = f"{name}({keys})" if keys else f"{name}()"
    return f"{text[:-1]}, step {step})" if step is not None else text


def _ranks(ranks):
    ranks = sorted(ranks)
    return f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}"


def _shown(name):
    """``init:'big'`` -> ``init('big')``; ``barrier`` -> ``barrier()``."""
    call, _, key = name.partition(":")
    return f"{call}({key})"


def _missing(need, waiters, records):
    """rank -> the first of ``need`` it has called fewer times than the ``waiters`` (with both
    counts), for every rank not waiting."""
    have = {n: max(records[r].get("counts", {}).get(n, 0) for r in waiters) for n in need}
    found = {}
    for rank, rec in records.items():
        if rank not in waiters:
            counts = rec.get("counts", {})
            short = [n for n in need if counts.get(n, 0) < have[n]]
            if short:
                found[rank] = (short[0], counts.get(short[0], 0), have[short[0]])
    return found


def diagnose(records, stall_timeout, finished=()):
    """The ``Stall`` of the job, or None while no call has waited ``stall_timeout`` s.

    Ranks blocked in the same call wait together. The call the report is about is the one some
    other rank never made (fewer of the collective, or of the ``init`` of the keys a data call
    waits on); failing that, the longest wait. A rank is *behind* when it skipped that call,
    has finished, or is blocked in another call.

    Args:
        records: rank -> record (every worker still running; ``{}`` before its first record).
        stall_timeout: seconds a blocking call may wait before it is a stall.
        finished: ranks that already ended (done): a step waiting on them cannot complete.
    """
    calls = {r: rec["call"] for r, rec in records.items() if rec.get("call")}
    if not any(call[3] >= stall_timeout for call in calls.values()):
        return None
    groups = {}
    for rank, call in calls.items():
        groups.setdefault(tuple(call[:3]), []).append(rank)
    stalled = [g for g in groups if max(calls[r][3] for r in groups[g]) >= stall_timeout] or list(groups)
    missing = {g: _missing(calls[groups[g][0]][4], groups[g], records) for g in groups}
    # a call some rank skipped first; a rank that is closing is never the call others must make
    first = max(groups, key=lambda g: (bool(missing[g]), g[0] != "close", g in stalled,
                                       max(calls[r][3] for r in groups[g])))
    waiters, missing = sorted(groups[first]), missing[first]
    seconds = max(calls[r][3] for r in waiters)
    parts = [f"{_ranks(waiters)} {'have' if len(waiters) > 1 else 'has'} waited "
             f"{seconds:.0f} s in {_where(first)}"]
    behind, elsewhere = [], []
    for rank in sorted(records):
        if rank in waiters:
            continue
        rec = records[rank]
        where = "is closing its KVStore (it pushes no more)" if rec.get("call", [""])[0] == "close" \
            else f"is in {_where(rec['call'])}" if rec.get("call") else (
            f"is between calls (last: {_where(rec['last'][-1])})" if rec.get("last")
            else "has made no call yet")
        if rank in missing:
            name, did, have = missing[rank]
            never = f"never called {_shown(name)}" if not did else \
                f"called {_shown(name)} {did} of {have} times"
            parts.append(f"rank {rank} {where} and {never}")
            behind.append(rank)
        elif rec.get("call"):
            parts.append(f"rank {rank} {where}, not in {_where(first)}")
            elsewhere.append(rank)
        else:
            parts.append(f"rank {rank} {where}")
    for rank in sorted(finished):
        parts.append(f"rank {rank} has finished (closed its KVStore) and will not call "
                     f"{_where(first)}")
        behind.append(rank)
    behind += elsewhere     # the rank that skipped a call is named before those it blocked
    if not behind and len(waiters) == len(records):
        parts.append("every worker waits in the same call: a server is not answering (see the "
                     "servers' logs) or the call's timeout is longer than the stall timeout")
    report = "stall: " + "; ".join(parts) + (
        f" (PSFRAME_STALL_TIMEOUT={stall_timeout:g}). Every rank must make the same collective "
        "calls (init, set_optimizer, barrier, checkpoints) and push the same number of steps; "
        "a worker that runs out of data early should call kv.join()")
    blocked = len(calls) == len(records)
    return Stall(report, behind[0] if behind else None, bool(behind) and blocked,
                 (tuple(first), tuple(waiters), tuple(behind)))


class StallWatch:
    """What the scheduler does with stalls: ``action`` "abort" ends the job on a deadlock
    (every running worker blocked, one behind or finished); anything else (a rank still
    computing, every worker in the same call, or ``action`` "warn") is reported once."""

    def __init__(self, timeout, action):
        self.timeout, self.action = timeout, action
        self._warned = set()

    def check(self, records, finished):
        """``(stall, abort)``: the stall to act on (None when there is none, or it was already
        reported), and whether to end the job with it."""
        stall = diagnose(records, self.timeout, finished)
        if stall is None:
            return None, False
        if stall.deadlocked and self.action == "abort":
            return stall, True
        if stall.signature in self._warned:
            return None, False
        self._warned.add(stall.signature)
        return stall, False
