"""Received zmq frames sent on by zmq's own reference, and the shard never writing to memory that
went out that way (it writes to a copy): real zmq sockets over inproc, a real SendGuard."""
import gc

import numpy as np
import zmq

import psframe.optim as optim
from psframe.protocol import ArrayDesc
from psframe.server.shard import ShardState
from psframe.transport.sockets import SendGuard, received_frame, send_frames


def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://frames")
    b.connect("inproc://frames")
    return ctx, a, b


def received(values):
    """A real received frame holding ``values`` (float32) and the array viewing all of it."""
    ctx, a, b = pair()
    try:
        a.send(np.asarray(values, np.float32))
        frame = b.recv(copy=False)
    finally:
        a.close(0)
        b.close(0)
        ctx.term()
    return frame, np.frombuffer(frame.buffer, np.float32)


def test_received_frame_is_found_for_views_of_the_whole_frame_only():
    frame, whole = received(np.arange(8))
    assert received_frame(whole) is frame
    assert received_frame(whole.reshape(2, 4)) is frame
    assert received_frame(whole.view(np.uint8)) is frame
    assert received_frame(whole[1:]) is None and received_frame(whole[::2]) is None
    assert received_frame(np.frombuffer(frame.buffer, np.float32, count=4)) is None
    assert received_frame(np.arange(8, dtype=np.float32)) is None
    assert received_frame(np.frombuffer(bytearray(32), np.float32)) is None


def test_a_received_frame_goes_on_with_its_bytes_and_nothing_to_track():
    frame, whole = received(np.arange(100_000))     # big enough for a zero-copy send
    ctx, a, b = pair()
    try:
        assert send_frames(a, [b"header", frame], track=True) is None
        head, body = b.recv_multipart()
        assert head == b"header" and body == whole.tobytes()
        tracker = send_frames(a, [b"header", frame, np.ones(100_000, np.float32)], track=True)
        assert tracker is not None                  # the numpy buffer is tracked, as before
        assert [len(f) for f in b.recv_multipart()] == [6, 400_000, 400_000]
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


def test_shared_memory_is_remembered_for_every_view_and_forgotten_with_its_array():
    guard, owner = SendGuard(), np.zeros(6, np.float32)
    guard.share(owner[2:4].reshape(2, 1))
    assert guard.shared(owner) and guard.shared(owner.reshape(2, 3))
    assert not guard.shared(np.zeros(6, np.float32))
    del owner
    gc.collect()
    assert guard._shared == {}


def d(key, step, shape=(3,)):
    return ArrayDesc(key, 0, "float32", shape, step)


def shard_sharing_its_value(sync, value):
    """A one-worker shard whose key "k" holds ``value``, just replied as a received frame."""
    guard = SendGuard()
    s = ShardState(1, sync=sync, guard=guard, owns_pushes=True)
    s.init(0, d("k", 0), np.array(value, np.float32), None, adopt=True)
    (_, sent), = s.pull(0, d("k", 0), "q")[0].arrays
    guard.share(sent)
    return s, sent


def pull(s, step):
    (_, out), = s.pull(0, d("k", step), "q")[0].arrays
    return out


def test_an_optimizer_update_writes_to_a_copy_of_a_value_sent_as_a_frame():
    s, sent = shard_sharing_its_value(True, [1.0, 2.0, 3.0])
    s.set_optimizer(optim.SGD(lr=0.5))
    s.push(0, d("k", 1), np.array([2.0, 2.0, 2.0], np.float32), None)
    assert sent.tolist() == [1.0, 2.0, 3.0]         # what zmq may still be reading
    assert pull(s, 1).tolist() == [0.0, 1.0, 2.0]
    s.push(0, d("k", 2), np.array([2.0, 2.0, 2.0], np.float32), None)   # the copy is ours now
    assert pull(s, 2).tolist() == [-1.0, 0.0, 1.0]


def test_an_async_push_adds_into_a_copy_of_a_value_sent_as_a_frame():
    s, sent = shard_sharing_its_value(False, [1.0, 2.0, 3.0])
    s.push(0, d("k", 1), np.array([1.0, 1.0, 1.0], np.float32), None)
    assert sent.tolist() == [1.0, 2.0, 3.0]
    assert pull(s, 1).tolist() == [2.0, 3.0, 4.0]


def test_a_member_step_writes_to_a_copy_of_a_group_value_sent_as_a_frame():
    guard = SendGuard()
    s = ShardState(1, guard=guard, owns_pushes=True)
    members = [("a", (2,)), ("b", (1,))]
    s.init(0, d("g", 0), np.array([1.0, 2.0, 3.0], np.float32), None, members=members, adopt=True)
    (_, sent), = s.pull(0, d("g", 0), "q")[0].arrays
    guard.share(sent)
    s.push(0, d("a", 1, (2,)), np.array([7.0, 8.0], np.float32), None)   # only a completes
    assert sent.tolist() == [1.0, 2.0, 3.0]
    (_, whole), = s.pull(0, ArrayDesc("g", 0, "float32", (3,), 0), "q")[0].arrays
    assert whole.tolist() == [7.0, 8.0, 3.0]
