"""The host aggregator's own connection to the servers: the worker client's routes, message
builders and request tracking, sending host sums.

It runs in the aggregator's thread, so it has sockets of its own (zmq sockets belong to one
thread), and no scheduler link: local rank 0's client keeps that, and its heartbeat verdict
(``check``) stops the uplink's waits too. It sends as local rank 0 (the first worker of the
host) and marks every push ``summed``: the servers add it at the host's turn for all of the
host's workers (see ``server/hosts.py``). It shares local rank 0's key records, whose parts,
groups and step counts are the uplink's from the moment the tier is on (local rank 0's own
client never pushes or pulls then).
"""
import numpy as np

from ..protocol import Command, codec
from ..transport import sockets
from . import messages
from .requests import Customer
from .routes import ServerLinks


class HostUplink:
    def __init__(self, owner):
        self.config, self.name, self.keys = owner.config, owner.name, owner._keys
        self.check = owner._failures.check        # raises once the job is gone
        self._ctx = sockets.new_context()
        book = {"servers": owner.server_addresses,
                "servers_local": [loc or "" for loc in owner.local_addresses]}
        try:
            self.links = ServerLinks(self._ctx, self.config, book)
        except BaseException:
            self._ctx.destroy(linger=0)
            raise
        self.customer = Customer(self.links.sockets(), None, owner._failures.check, self.config.timeout,
                                 owner._timeline)

    def sockets(self):
        return self.links.sockets()

    def push(self, keys, values, prepare=None):
        """Send the host sums ``values`` of ``keys``; returns the requests (not waited for).
        ``prepare(batch)``, if given, runs right before each message is sent (and all of them
        before this returns)."""
        plain, fused = messages.by_group(self.keys, keys, values)
        return self._send_pushes(Command.PUSH, plain, fused, {}, prepare)

    def pushpull(self, keys, values, outs, prepare=None):
        """``(requests, finish)``: push the host sums and have the replies land in ``outs``."""
        plain, fused = messages.by_group(self.keys, keys, list(zip(values, outs)))
        targets, finish = messages.pull_targets(self.keys, [(k, out) for k, (_, out) in plain],
                                                [(g, [o for _, o in pairs]) for g, pairs in fused])
        reqs = self._send_pushes(Command.PUSHPULL, [(k, v) for k, (v, _) in plain],
                                 [(g, [v for v, _ in pairs]) for g, pairs in fused], targets, prepare)
        return reqs, finish

    def pull(self, keys, outs):
        """``(requests, finish)``: pull ``keys`` into ``outs`` for the whole host."""
        batches, finish = messages.pull_batches(self.keys, *messages.by_group(self.keys, keys, outs))
        return [self._send(s, Command.PULL, b, {"meta": b.meta}) for s, b in batches], finish

    def pushes_sent(self, key):
        """Host pushes of ``key`` sent so far (the step of the newest)."""
        return self.keys[key].pushes

    def take_errors(self):
        """Errors of pushes nobody waits for, since the last call."""
        return self.customer.take_errors()

    def close(self):
        self.links.close()
        self._ctx.term()

    def _send_pushes(self, cmd, plain, fused, targets, prepare):
        batches, wait = messages.push_batches(cmd, self.keys, plain, fused, targets, self._backpressure)
        reqs = []
        for s, b in batches:
            if prepare is not None:
                prepare(b)
            reqs.append(self._send(s, cmd, b, {"summed": True}, wait_for_send=wait))
        return reqs

    def _backpressure(self, info):
        self.customer.wait_merged(info, self.config.max_steps_ahead)

    def _send(self, lane, cmd, batch, body, wait_for_send=False):
        msg_id, req = self.customer.new(lane[0], cmd, batch.acks, batch.targets)
        frames = codec.encode(cmd, msg_id, self.name, batch.descs,
                              [b.view(np.uint8) for b in batch.bufs], body)
        tracker = self.links.send(lane, frames, track=wait_for_send or bool(batch.send_buffers))
        for slot in batch.send_buffers:
            slot.tracker = tracker
        req.tracker = tracker if wait_for_send else None
        self.customer.add(msg_id, req)
        return req
