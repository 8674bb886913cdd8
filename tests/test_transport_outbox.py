"""The non-blocking Outbox of a service: a peer that stops reading is held, then cut off and
named, while another peer is served; held replies are copies."""
import logging
import time

import numpy as np
import zmq

from psframe.transport.outbox import Outbox


def test_a_peer_that_stops_reading_is_cut_off_while_another_is_served(caplog):
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.router_mandatory = 1
        router.sndhwm = 2
        router.sndbuf = 65536
        port = router.bind_to_random_port("tcp://127.0.0.1")
        peers = {}
        for name in (b"slow", b"fast"):
            d = ctx.socket(zmq.DEALER)
            d.identity, d.rcvhwm, d.rcvbuf, d.linger = name, 1, 65536, 0
            d.connect(f"tcp://127.0.0.1:{port}")
            d.send(b"hi")
            peers[name] = d
        for _ in peers:
            router.recv_multipart()
        box = Outbox(router, send_timeout=0.5, name_of=lambda p: p.decode())
        value = np.zeros(1 << 18, np.float32)           # 1 MiB replies
        for i in range(40):
            box.send(b"slow", [b"h", value])
        assert b"slow" in box.held
        value[:] = 7                                    # what a next step would do in place
        held = box.held[b"slow"].replies[-1][1]
        assert bytes(held) == bytes(np.zeros(1 << 18, np.float32))   # a copy was held
        got = 0
        with caplog.at_level(logging.ERROR):
            deadline = time.monotonic() + 5
            while b"slow" not in box.cut and time.monotonic() < deadline:
                box.send(b"fast", [b"h", b"x" * 100])
                while peers[b"fast"].poll(10):
                    peers[b"fast"].recv_multipart()
                    got += 1
                box.flush()
        assert b"slow" in box.cut and box.cut_count == 1
        assert "cut off slow" in caplog.text and "PSFRAME_SEND_TIMEOUT=0.5" in caplog.text
        assert got > 10                        # the other peer was served all along
        assert box.send(b"slow", [b"h"]) is None and b"slow" not in box.held
    finally:
        ctx.destroy(0)
