"""The scheduler's pure state: rendezvous, start deadline, heartbeats, barrier, placement, done."""
from psframe.scheduler.membership import MembershipState


def make(now=0.0, workers=2, servers=1):
    return MembershipState(workers, servers, bigarray_bound=10, start_timeout=5,
                           heartbeat_timeout=3, now=now)


def test_address_book_goes_to_everyone_once_all_registered():
    m = make()
    assert m.register(b"s0", 1, "server", 0, "h", "tcp://h:1", 0) == []
    assert m.register(b"w1", 1, "worker", 1, "h", "", 0) == []
    sends = m.register(b"w0", 1, "worker", 0, "h", "", 0)
    assert {s.peer for s in sends} == {b"s0", b"w0", b"w1"}
    assert all(s.body["servers"] == ["tcp://h:1"] for s in sends)


def test_duplicate_or_out_of_range_rank_is_an_error():
    m = make()
    m.register(b"a", 1, "worker", 0, "h", "", 0)
    assert m.register(b"b", 1, "worker", 0, "h2", "", 0)[0].cmd == "error"
    assert "outside" in m.register(b"c", 1, "worker", 5, "h", "", 0)[0].body["message"]


def test_start_timeout_names_missing_ranks():
    m = make()
    m.register(b"w0", 7, "worker", 0, "h", "", 0)
    assert m.tick(4.9) == []
    sends = m.tick(5.1)
    assert sends and sends[0].cmd == "abort" and sends[0].id == 7
    assert "1 of 2 workers (ranks [1])" in m.failure and "1 of 1 server (ranks [0])" in m.failure


def test_heartbeat_clock_starts_when_everyone_is_in():
    """A node waits for the address book without heartbeating: however long the others took to
    register, its heartbeat deadline counts from the moment the book went out."""
    m = make()
    m.register(b"s0", 1, "server", 0, "h", "tcp://h:1", 0)
    m.register(b"w0", 1, "worker", 0, "h", "", 2.0)
    m.register(b"w1", 1, "worker", 1, "h", "", 4.0)      # server silent for 4s > timeout 3
    assert m.tick(4.5) == [] and m.failure is None
    assert m.tick(7.1) and "no heartbeat" in m.failure


def _ready():
    m = make()
    for peer, role, rank in ((b"s0", "server", 0), (b"w0", "worker", 0), (b"w1", "worker", 1)):
        m.register(peer, 1, role, rank, "host", "tcp://x:1" if role == "server" else "", 0)
    return m


def test_silent_node_aborts_job_naming_it():
    m = _ready()
    m.heartbeat(b"hb0", "worker:0", 2.0)
    m.heartbeat(b"s0", "server:0", 2.0)
    assert m.tick(2.5) == []
    sends = m.tick(3.5)                       # worker 1 silent since 0
    assert "worker 1@host" in m.failure and {s.cmd for s in sends} == {"abort"}


def test_barrier_and_done_then_servers_shut_down():
    m = _ready()
    assert m.enter_barrier(b"w0", 3, 0) == []
    assert m.enter_barrier(b"w0", 9, 0) == []        # a retry counts once
    assert {(s.peer, s.id) for s in m.enter_barrier(b"w1", 4, 1)} == {(b"w0", 9), (b"w1", 4)}
    m.done(b"w0", 5, "worker:0")
    sends = m.done(b"w1", 6, "worker:1")
    assert m.finished and [s.cmd for s in sends] == ["ok", "shutdown"]


def test_rank0_decides_placement_others_wait():
    m = _ready()
    assert m.place(b"w1", 9, 1, [["a", 4, 32]]) == []            # parked
    sends = m.place(b"w0", 8, 0, [["a", 4, 32], ["big", 100, 800]])
    assert [s.body["servers"] for s in sends] == [[0, 0], [0]]   # one server: nothing sliced


def test_a_group_places_its_members_and_a_differently_grouped_worker_is_told():
    m = _ready()
    assert m.place(b"w1", 9, 1, [["\x00g:2:'b'", 2, 16, ["b", "c"]]]) == []   # parked
    sends = m.place(b"w0", 8, 0, [["\x00g:3:'a'", 3, 24, ["a", "b", "c"]]])
    assert sends[0].body == {"servers": [0]}
    assert sends[1].cmd == "error" and "initialise the same lists of keys" in sends[1].body["message"]
    (alone,) = m.place(b"w1", 10, 1, [["a", 1, 8]])     # a member asked alone: its group's server
    assert alone.body == {"servers": [0]}


def test_a_node_reporting_its_own_failure_is_not_told_back():
    m = _ready()
    for peer, name in ((b"hb0", "worker:0"), (b"hb1", "worker:1"), (b"s0", "server:0")):
        m.heartbeat(peer, name, 1.0)
    sends = m.fail("worker:1", "uncaught ValueError: boom")
    # worker 0 hears it on both sockets (heartbeat and request), worker 1 on neither
    assert {s.peer for s in sends} == {b"hb0", b"w0", b"s0"}
    assert m.failure_reported and "worker 1@host failed: uncaught ValueError: boom" in m.failure


def test_abort_answers_a_placement_still_waiting_for_rank_0():
    m = _ready()
    assert m.place(b"w1", 5, 1, [["k", 3, 12]]) == []          # parked until rank 0 places "k"
    sends = m.abort("stalled")
    assert (b"w1", 5) in {(s.peer, s.id) for s in sends if s.cmd == "abort"}
