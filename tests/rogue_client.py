"""A rogue client for the security tests: sends every command of the wire protocol to a job's
scheduler and servers, with whatever credentials and claimed sender it is given, and reports
what came back. Run as a script (``python rogue_client.py INFO CREDS_FILE|- CLAIM``) it prints
one JSON line, so a test can run it inside a network namespace too."""
import json
import sys
import time

import numpy as np
import zmq

from psframe.errors import from_body
from psframe.protocol import ArrayDesc, Command, codec
from psframe.transport import auth, credentials

WAIT = 2.0    # seconds to collect replies; a refused connection gives none at all


def messages(claim, size):
    """One message per command, each with a body that a real peer would send."""
    desc = ArrayDesc("w", 0, "float32", (size,), 1)
    evil = np.full(size, 1e6, np.float32)
    role, _, rank = claim.partition(":")
    sgd = {"name": "sgd", "config": {"lr": 1000.0}}
    built = {
        Command.REGISTER: codec.encode(Command.REGISTER, 1, claim, body={
            "role": role if role in ("worker", "server") else "server", "rank": int(rank or 0),
            "host": "rogue", "address": "tcp://127.0.0.1:9", "local_address": ""}),
        Command.HEARTBEAT: codec.encode(Command.HEARTBEAT, 2, claim),
        Command.PLACE: codec.encode(Command.PLACE, 3, claim, body={"keys": [["w", size, size * 4]]}),
        Command.BARRIER: codec.encode(Command.BARRIER, 4, claim),
        Command.DONE: codec.encode(Command.DONE, 5, claim),
        Command.SHUTDOWN: codec.encode(Command.SHUTDOWN, 6, claim),
        Command.ABORT: codec.encode(Command.ABORT, 7, claim, body={"reason": "rogue"}),
        Command.INIT: codec.encode(Command.INIT, 8, claim, [ArrayDesc("evil", 0, "float32", (size,), 0)],
                                   [evil], body={"sync": True}),
        Command.PUSH: codec.encode(Command.PUSH, 9, claim, [desc], [evil]),
        Command.PULL: codec.encode(Command.PULL, 10, claim, body={"meta": [desc.to_wire()]}),
        Command.PUSHPULL: codec.encode(Command.PUSHPULL, 11, claim, [desc], [evil]),
        Command.SET_OPTIMIZER: codec.encode(Command.SET_OPTIMIZER, 12, claim, body={"optimizer": sgd}),
        Command.STATS: codec.encode(Command.STATS, 13, claim),
        Command.OK: codec.encode(Command.OK, 14, claim),
        Command.ERROR: codec.encode(Command.ERROR, 15, claim, body={"name": "PSError", "message": "x"}),
    }
    for i, cmd in enumerate(c for c in Command if c not in built):   # any command added later
        built[cmd] = codec.encode(cmd, 100 + i, claim, body={"rank": 0})
    return built


def as_itself(creds):
    """What a stolen credential may not do even under its own name: register as a server,
    tell the job to shut down, answer as if it were the scheduler."""
    me = creds.identity
    return {
        Command.REGISTER: codec.encode(Command.REGISTER, 1, me, body={
            "role": "server", "rank": 0, "host": "rogue", "address": "tcp://127.0.0.1:9",
            "local_address": ""}),
        Command.SHUTDOWN: codec.encode(Command.SHUTDOWN, 6, me),
        Command.OK: codec.encode(Command.OK, 14, me),
        Command.ERROR: codec.encode(Command.ERROR, 15, me, body={"name": "PSError", "message": "x"}),
    }


def attack(info, creds, claim, make=None):
    """Send every command (or those ``make()`` builds) to every endpoint of the job in
    ``info``; returns
    ``{endpoint: {command: reply}}`` where a reply is ``"ok"``, the error's class name, or
    absent when nothing came back."""
    security = auth.Security(creds)
    targets = {"scheduler": ("scheduler", info["scheduler"])}
    for i, address in enumerate(info["servers"]):
        targets[f"server:{i}"] = (f"server:{i}", address)
    for i, address in enumerate(info.get("local", [])):
        if address:
            targets[f"server:{i} local"] = (f"server:{i}", address)
    ctx = zmq.Context()
    try:
        socks = {}
        for name, (peer, address) in targets.items():
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndtimeo = 2000
            security.connect(sock, peer)
            sock.connect(address)
            socks[name] = sock
        by_id = {}
        for name, sock in socks.items():
            built = make() if make is not None else messages(claim, info["size"])
            for cmd, frames in built.items():
                by_id[(name, codec.decode_header(frames[0]).id)] = cmd.value
                try:
                    sock.send_multipart(frames, copy=True)
                except zmq.Again:
                    break
        replies = {name: {} for name in socks}
        deadline = time.monotonic() + WAIT
        poller = zmq.Poller()
        for sock in socks.values():
            poller.register(sock, zmq.POLLIN)
        while time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                name = next(n for n, s in socks.items() if s is sock)
                msg = codec.decode(sock.recv_multipart())
                cmd = by_id.get((name, msg.id), f"id {msg.id}")
                if msg.cmd is Command.ERROR:
                    replies[name][cmd] = type(from_body(msg.body)).__name__
                else:
                    replies[name][cmd] = msg.cmd.value
        return replies
    finally:
        ctx.destroy(0)


if __name__ == "__main__":
    info = json.load(open(sys.argv[1]))
    creds = None if sys.argv[2] == "-" else credentials.read_file(sys.argv[2])
    print(json.dumps(attack(info, creds, sys.argv[3])), flush=True)


def slow_reader(info, creds, pulls):
    """Connect as ``creds`` to server 0 and send ``pulls`` pulls of its key ``w`` without
    ever reading a reply (zmq's receive queue of one message, a small kernel buffer). Returns
    the context and socket; the caller destroys them."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvhwm = 1
    sock.rcvbuf = 65536
    auth.Security(creds).connect(sock, "server:0")
    sock.connect(info["servers"][0])
    desc = ArrayDesc("w", 0, "float32", (info["size"],), 0)
    for i in range(pulls):
        sock.send_multipart(codec.encode(Command.PULL, 100 + i, creds.identity,
                                         body={"meta": [desc.to_wire()]}))
    return ctx, sock


def huge_message(info, creds, nbytes):
    """Send server 0 a push whose one array frame has ``nbytes`` (zero pages: nothing is
    touched here); returns whatever came back within ``WAIT`` s (None: nothing)."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        auth.Security(creds).connect(sock, "server:0")
        sock.connect(info["servers"][0])
        frame = np.zeros(nbytes, np.uint8)
        header = codec.encode_header(Command.PUSH, 1, creds.identity,
                                     [ArrayDesc("w", 0, "float32", (nbytes // 4,), 1)])
        sock.send_multipart([header, frame], copy=False)
        if sock.poll(int(WAIT * 1000)):
            return codec.decode(sock.recv_multipart())
        return None
    finally:
        ctx.destroy(0)
