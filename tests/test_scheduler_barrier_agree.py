"""A barrier whose workers must agree on a value (the gradient compression config): the
scheduler releases them all with "ok" when they do, with the same ConfigError when not."""
from psframe.scheduler.membership import MembershipState


def _ready(workers=3):
    m = MembershipState(workers, 1, bigarray_bound=10, start_timeout=5, heartbeat_timeout=3, now=0)
    m.register(b"s0", 1, "server", 0, "host", "tcp://x:1", 0)
    for r in range(workers):
        m.register(b"w%d" % r, 1, "worker", r, "host", "", 0)
    return m


def agree(value):
    return {"what": "set_gradient_compression", "value": value}


def test_same_values_release_everyone():
    m = _ready()
    assert m.enter_barrier(b"w0", 1, 0, agree=agree({"type": "fp16"})) == []
    assert m.enter_barrier(b"w1", 1, 1, agree=agree({"type": "fp16"})) == []
    sends = m.enter_barrier(b"w2", 1, 2, agree=agree({"type": "fp16"}))
    assert [s.cmd for s in sends] == ["ok"] * 3


def test_different_values_are_one_error_for_everyone_naming_each_worker():
    m = _ready()
    m.enter_barrier(b"w0", 1, 0, agree=agree({"type": "2bit", "threshold": 0.5}))
    m.enter_barrier(b"w1", 1, 1, agree=agree({"type": "2bit", "threshold": 0.5}))
    sends = m.enter_barrier(b"w2", 1, 2, agree=agree({"type": "none"}))
    assert [s.cmd for s in sends] == ["error"] * 3
    message = sends[0].body["message"]
    assert sends[0].body["name"] == "ConfigError"
    assert message.startswith("set_gradient_compression differs between workers")
    assert "worker 2: {'type': 'none'}" in message and "worker 0: {'type': '2bit'" in message
    # the next barrier starts clean
    assert [s.cmd for s in [*m.enter_barrier(b"w0", 2, 0), *m.enter_barrier(b"w1", 2, 1),
                            *m.enter_barrier(b"w2", 2, 2)]] == ["ok"] * 3


def test_a_worker_that_brings_nothing_disagrees():
    m = _ready(2)
    m.enter_barrier(b"w0", 1, 0, agree=agree({"type": "fp16"}))
    sends = m.enter_barrier(b"w1", 1, 1)
    assert [s.cmd for s in sends] == ["error"] * 2
    assert "worker 1: None" in sends[0].body["message"]
