"""The scheduler's event loop: each request goes to its ``handle_<command>``, which asks
MembershipState, and the sends it returns go out."""
import logging
import sys
import time

from ..config import EXIT_ABORTED_BY_PEER, blame_line
from ..errors import ProtocolError, RefusedError
from ..logs import count
from ..protocol import Command, codec
from ..transport import addresses, peers, sockets
from ..transport.requests import RequestLoop
from .membership import MembershipState

logger = logging.getLogger(__name__)


class SchedulerService(RequestLoop):
    """Runs until every worker is done (exit 0) or the job fails (exit 1)."""

    who = name = "scheduler"

    def __init__(self, config):
        self.config = config
        self.ctx = sockets.new_context()
        _, host, port = addresses.parse(config.scheduler)
        self.bind_router(config, lambda security: sockets.router_bind(
            self.ctx, f"tcp://{peers.bind_ip(host)}:{port}", security))
        self.state = MembershipState(config.num_workers, config.num_servers, config.bigarray_bound,
                                     config.start_timeout, config.heartbeat_timeout, time.monotonic(),
                                     config.stall_timeout, config.stall_action)

    def run(self):
        logger.info("scheduler at %s waiting for %s and %s", self.config.scheduler,
                    count(self.config.num_workers, "worker"), count(self.config.num_servers, "server"))
        try:
            while True:
                for _ in sockets.poll([self.sock], 0.1):
                    self.drain()
                self.housekeeping()
                self._send(self.state.tick(time.monotonic()))
                while self.state.warnings:
                    logger.warning("%s", self.state.warnings.pop(0))
                if self.state.failure:
                    logger.error("job failed: %s", self.state.failure)
                    if self.state.blamed:
                        print(blame_line(*self.state.blamed, self.state.failure), file=sys.stderr,
                              flush=True)
                    # a node that reported its own failure is the root cause; we only relay it
                    return EXIT_ABORTED_BY_PEER if self.state.failure_reported else 1
                if self.state.finished:
                    logger.info("every worker finished; servers told to shut down")
                    return 0
        finally:
            logger.info("refused %(refused_connections)d connections and %(refused_messages)d "
                        "messages; cut off %(cut_off_peers)d peers", self.security_counters())
            self.close_router(sockets.LINGER_MS)
            sockets.end_context(self.ctx)

    # -- handlers: each returns the sends MembershipState decided -------------------------
    def handle(self, peer, msg):
        self._send(self.handler(msg)(peer, msg))

    def handle_heartbeat(self, peer, msg):
        calls = msg.body.get("calls") if msg.body else None
        if calls is not None and not _is_call_record(calls):
            raise ProtocolError("malformed heartbeat: body.calls is not a call record")
        return self.state.heartbeat(peer, msg.sender, time.monotonic(), calls)

    def handle_register(self, peer, msg):
        b = msg.body
        if f"{_field(b, 'role', str)}:{_field(b, 'rank', int)}" != msg.sender:
            raise RefusedError(f"refused 'register' from {msg.sender!r}: it registers as "
                               f"{b['role']}:{b['rank']}; a process registers only as itself")
        return self.state.register(peer, msg.id, _field(b, "role", str), _field(b, "rank", int),
                                   _field(b, "host", str), _field(b, "address", str, ""),
                                   time.monotonic(), _field(b, "local_address", str, ""))

    def handle_barrier(self, peer, msg):
        rank = codec.sender_rank(msg.sender, "worker", self.config.num_workers)
        return self.state.enter_barrier(peer, msg.id, rank, msg.body.get("note"),
                                        _agree(msg.body.get("agree")))

    def handle_place(self, peer, msg):
        rank = codec.sender_rank(msg.sender, "worker", self.config.num_workers)
        return self.state.place(peer, msg.id, rank, _placements(msg.body))

    def handle_join(self, peer, msg):
        return self.state.join(peer, msg.id, msg.sender)

    def handle_done(self, peer, msg):
        return self.state.done(peer, msg.id, msg.sender)

    def handle_abort(self, peer, msg):
        return self.state.fail(msg.sender, str(msg.body.get("reason", "unknown")))

    def _send(self, sends):
        for s in sends:
            self.send_raw(s.peer, codec.encode(Command(s.cmd), s.id, self.name, body=s.body))


def _is_call_record(calls):
    """A worker's call record as ``CallRecord.wire`` makes it (checked before the scheduler's
    stall diagnosis reads it)."""
    if type(calls) is not dict:
        return False
    call, last, counts = calls.get("call"), calls.get("last"), calls.get("counts")
    names = (str, type(None))
    return (type(last) is list and type(counts) is dict
            and all(type(k) is str and type(v) is int for k, v in counts.items())
            and all(type(c) is list and len(c) == 3 and type(c[0]) is str for c in last)
            and (call is None or type(call) is list and len(call) == 5 and type(call[0]) is str
                 and type(call[1]) is str and type(call[2]) in (int, type(None))
                 and type(call[3]) in (int, float) and type(call[4]) is list
                 and all(type(n) in names for n in call[4])))


def _field(body, name, kind, default=None):
    value = body.get(name, default)
    if type(value) is not kind:
        raise ProtocolError(f"malformed message: body.{name} is {value!r}, not a {kind.__name__}")
    return value


def _placements(body):
    """``body["keys"]``: ``[[key, size, nbytes(, [member keys])], ...]`` with int/str keys and
    int sizes."""
    keys = body.get("keys")
    ok = type(keys) is list and all(
        type(k) is list and len(k) in (3, 4) and type(k[0]) in (int, str)
        and type(k[1]) is int and type(k[2]) is int and k[1] >= 0 and k[2] >= 0
        and (len(k) == 3 or type(k[3]) is list and all(type(m) in (int, str) for m in k[3]))
        for k in keys)
    if not ok:
        raise ProtocolError("malformed message: body.keys is not a list of [key, size, nbytes]")
    return keys


def _agree(raw):
    """A barrier's ``agree`` field: None, or ``{"what": str, "value": ...}``."""
    if raw is not None and (type(raw) is not dict or type(raw.get("what")) is not str or "value" not in raw):
        raise ProtocolError("malformed message: body.agree is not {\"what\": str, \"value\": ...}")
    return raw
