"""Stall diagnosis, pure: worker call records in, a report naming who is behind out."""
from psframe.kvstore.call_record import CallRecord
from psframe.scheduler.stalls import diagnose


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _records(setup, wait):
    clock = Clock()
    recs = {}
    for rank, calls in setup.items():
        rec = CallRecord(clock)
        for call in calls[:-1]:
            with rec.call(*call):
                pass
        if calls and calls[-1] is not None:
            rec.enter(*calls[-1])
        recs[rank] = rec
    clock.now += wait
    return {r: rec.wire() for r, rec in recs.items()}


def test_rank_that_never_called_init_is_named():
    recs = _records({0: [("init", ["w"]), ("init", ["big"])],
                     1: [("init", ["w"]), ("init", ["big"])],
                     2: [("init", ["w"]), ("pushpull", ["w"], 7)]}, wait=31)
    stall = diagnose(recs, 30)
    assert stall.blamed == 2
    assert "ranks 0,1 have waited 31 s in init('big')" in stall.report
    assert "rank 2 is in pushpull('w', step 7) and never called init('big')" in stall.report


def test_no_stall_before_the_timeout():
    recs = _records({0: [("init", ["big"])], 1: [("pushpull", ["w"], 1)]}, wait=5)
    assert diagnose(recs, 30) is None


def test_set_optimizer_on_one_rank_only():
    recs = _records({0: [("set_optimizer", [])],
                     1: [("pushpull", ["w"], 3)], 2: [("pushpull", ["w"], 3)]}, wait=40)
    stall = diagnose(recs, 30)
    assert stall.blamed == 1
    assert "rank 0 has waited 40 s in set_optimizer()" in stall.report
    assert "rank 1 is in pushpull('w', step 3) and never called set_optimizer()" in stall.report
    assert "rank 2 is in pushpull('w', step 3) and never called set_optimizer()" in stall.report


def test_late_barrier_counts_calls():
    recs = _records({0: [("barrier", []), ("barrier", [])],
                     1: [("barrier", []), ("pull", ["w"], 4)]}, wait=31)
    stall = diagnose(recs, 30)
    assert stall.blamed == 1
    assert "rank 1 is in pull('w', step 4) and called barrier() 1 of 2 times" in stall.report


def test_finished_rank_is_named():
    recs = _records({1: [("pushpull", ["w"], 6)], 2: [("pushpull", ["w"], 6)]}, wait=31)
    stall = diagnose(recs, 30, finished=[0])
    assert stall.blamed == 0
    assert "rank 0 has finished" in stall.report


def test_everyone_waiting_in_the_same_call_blames_no_rank():
    recs = _records({0: [("pushpull", ["w"], 2)], 1: [("pushpull", ["w"], 2)]}, wait=31)
    stall = diagnose(recs, 30)
    assert stall.blamed is None and "a server is not answering" in stall.report


def test_many_keys_are_summarised():
    recs = _records({0: [("init", list("abcdefg"))], 1: [None]}, wait=31)
    stall = diagnose(recs, 30)
    assert "init('a', 'b', 'c', 'd' and 3 more)" in stall.report
    assert stall.blamed == 1 and "has made no call yet" in stall.report


def test_push_of_a_key_a_rank_never_initialised():
    recs = _records({0: [("init", ["w"]), ("init", ["big"]), ("pushpull", ["w", "big"], 1)],
                     1: [("init", ["w"]), ("init", ["big"]), ("pushpull", ["w", "big"], 1)],
                     2: [("init", ["w"]), ("pushpull", ["w"], 2)]}, wait=31)
    stall = diagnose(recs, 30)
    assert stall.blamed == 2 and stall.deadlocked
    assert ("ranks 0,1 have waited 31 s in pushpull('w', 'big', step 1); rank 2 is in "
            "pushpull('w', step 2) and never called init('big')") in stall.report


def test_a_rank_still_computing_is_not_a_deadlock():
    recs = _records({0: [("barrier", [])], 1: [("pull", ["w"], 1), None]}, wait=31)
    stall = diagnose(recs, 30)
    assert stall.blamed == 1 and not stall.deadlocked
    assert "rank 1 is between calls (last: pull('w', step 1)) and never called barrier()" \
        in stall.report


def test_a_rank_closing_early_is_the_one_behind():
    recs = _records({0: [("pushpull", ["w"], 5), ("close", [])],
                     1: [("pushpull", ["w"], 6)], 2: [("pushpull", ["w"], 6)]}, wait=31)
    stall = diagnose(recs, 30)
    assert stall.blamed == 0 and stall.deadlocked
    assert ("ranks 1,2 have waited 31 s in pushpull('w', step 6); rank 0 is closing its KVStore "
            "(it pushes no more), not in pushpull('w', step 6)") in stall.report


def test_a_rank_closing_is_behind_even_before_the_others_reach_the_timeout():
    clock_recs = _records({0: [("pushpull", ["w"], 5), ("close", [])]}, wait=31)
    others = _records({1: [("pushpull", ["w"], 6)], 2: [("pushpull", ["w"], 6)]}, wait=1)
    stall = diagnose({**clock_recs, **others}, 30)
    assert stall.blamed == 0 and stall.deadlocked
    assert "rank 0 is closing its KVStore" in stall.report
