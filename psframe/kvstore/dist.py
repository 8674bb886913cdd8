"""The worker-side client of the dist kinds: the KVStore API over the job's servers.

A call is built into messages (``messages``), sent on its routes to the servers (``routes``),
and waited on as requests (``requests``: ps-lite's Customer, which makes progress on every
reply while waiting on one); ``failures`` connects the worker's failures and the job's; calls on
sparse keys are in ``sparse_calls``, those through the host tier in ``host_tier``.
"""
import atexit
import logging

import numpy as np

from .. import timeline
from ..errors import ConfigError, PeerLostError, PSError, from_wire, to_wire
from ..protocol import Command, codec
from ..transport import auth, peers, sockets
from . import checkpointing, fusion, host_tier, messages
from .base import KVStore, Pending
from .call_record import CallRecord
from .failures import Failures, leaves_on_timeout
from .requests import NP_DTYPES, Customer
from .sparse_calls import SparseCalls
from .routes import SendQueue, ServerLinks

logger = logging.getLogger(__name__)


class DistKVStore(SparseCalls, KVStore):
    """``dist_sync`` / ``dist_async`` / ``dist_device_sync`` worker."""

    def __init__(self, kind, config):
        super().__init__(config.rank, config.num_workers, config.local_rank, config.local_size)
        self.type, self.config = kind, config
        self.sync = kind != "dist_async"
        self.name = f"worker:{config.rank}"
        self._ctx = sockets.new_context()
        try:
            security = auth.for_config(config)
            self._sched = sockets.dealer(self._ctx, config.scheduler, security=security, peer="scheduler")
            book = peers.register(self._sched, config, "worker", config.rank)
            self._links = ServerLinks(self._ctx, config, book)
        except BaseException:
            self._ctx.destroy(linger=0)     # closes whatever sockets were made
            raise
        self.server_addresses, self.local_addresses = self._links.addresses, self._links.local_addresses
        self.sent_messages = self._links.sent_messages    # requests per transport (diagnostics)
        self._servers = self._links.tcp                   # per server: its TCP socket
        self._timeline = timeline.for_process(config, "worker", config.rank)
        self.timeline = self._timeline     # PSFRAME_TIMELINE's trace, for psframe.torch's events
        for i in range(len(self._servers) if self._timeline is not None else 0):
            self._timeline.name_thread(i, f"requests to server {i}")
        self.calls = CallRecord()
        self._failures = Failures(self._ctx, config, self.name, self._sched, self)
        self._outgoing = SendQueue(self._links)
        self._customer = Customer(self._links.sockets(), self._sched, self._failures.check,
                                  config.timeout, self._timeline, self._outgoing)
        atexit.register(self.close)
        logger.info("worker %d of %d connected to servers at %s", self.rank, self.num_workers,
                    self._links.describe())
        self._tier = host_tier.join(self)     # None: this worker talks to the servers itself
        self._told_tiered = False             # an init told the servers our pushes are host sums

    # -- the kind's operations ----------------------------------------------------------
    def _step(self, keys, ahead):
        """The sync step a call on ``keys`` is at (its first key's), for the call record."""
        if not self.sync or not keys or keys[0] not in self._keys:
            return None
        pushed = self._tier.pushed(keys[0]) if self._through_tier else self._keys[keys[0]].pushes
        return pushed + ahead

    @leaves_on_timeout
    def _init(self, keys, values):
        with self.calls.call("init", keys):
            self._init_keys(keys, values)

    def _init_keys(self, keys, values):
        units = fusion.plan(keys, [self._keys[k] for k in keys], self.config.fuse_key_bytes,
                            self.config.bigarray_bound, len(self._servers))
        placed = self._ask_scheduler(Command.PLACE, {"keys": messages.placement_request(units, self._keys)},
                                     "placing keys")["servers"]
        batches = messages.init_batches(units, placed, dict(zip(keys, values)), self._keys, self.rank,
                                        len(self._servers))
        # see server/hosts.py; tiered: the servers count a joined worker inside its host's sums
        host = [self.rank - self.local_rank, self.local_size, self.config.host, self._through_tier]
        self._told_tiered = self._told_tiered or self._through_tier
        reqs = [self._send(s, Command.INIT, b, {"meta": b.meta, "sync": self.sync, "groups": b.groups,
                                                "host": host},
                           wait_for_send=True)
                for s, b in batches]
        self._customer.wait(reqs, "init of keys %s" % keys[:5])
        if self._tier is not None:
            self._tier.init(keys)

    @property
    def _through_tier(self):
        """Data calls go through the host tier unless gradient compression is set: the tier
        sums raw gradients, so compressed pushes go to the servers directly (every worker of
        the job agreed on the same compression, so all of them do)."""
        return self._tier is not None and self._compressor is None

    @leaves_on_timeout
    def _push(self, keys, values, priority):
        with self.calls.call("push", keys, self._step(keys, 1)):
            self._push_keys(keys, values, priority)

    def _push_keys(self, keys, values, priority):
        if self._through_tier:
            return self._tier.push(keys, values)
        plain, fused = messages.by_group(self._keys, keys, values)
        self._customer.wait_sent(self._send_pushes(Command.PUSH, plain, fused, {}, priority))
        self._customer.raise_deferred()

    @leaves_on_timeout
    def _pull(self, keys, outs, priority):
        with self.calls.call("pull", keys, self._step(keys, 0)):
            self._pull_keys(keys, outs, priority)

    def _pull_keys(self, keys, outs, priority):
        if self._through_tier:
            return self._tier.pull(keys, outs)
        batches, finish = messages.pull_batches(self._keys, *messages.by_group(self._keys, keys, outs))
        reqs = [self._send(s, Command.PULL, b, {"meta": b.meta}, priority=priority) for s, b in batches]
        self._customer.wait(reqs, f"pull of {_keys_text(keys)}")
        for f in finish:
            f()

    def _pushpull(self, keys, values, outs, priority):
        with self.calls.call("pushpull", keys, self._step(keys, 1)):
            self._pushpull_start(keys, values, outs, priority).wait()

    @leaves_on_timeout
    def _pushpull_start(self, keys, values, outs, priority):
        step = self._step(keys, 1)
        if self._through_tier:
            done, finish_tier = self._tier.pushpull(keys, values, outs)

            @leaves_on_timeout
            def wait_tier(store, timeout):
                with store.calls.call("pushpull", keys, step):
                    finish_tier(timeout)
            return Pending(done, lambda timeout: wait_tier(self, timeout))
        plain, fused = messages.by_group(self._keys, keys, list(zip(values, outs)))
        targets, finish = messages.pull_targets(self._keys, [(k, out) for k, (_, out) in plain],
                                                [(g, [o for _, o in pairs]) for g, pairs in fused])
        reqs = self._send_pushes(Command.PUSHPULL, [(k, v) for k, (v, _) in plain],
                                 [(g, [v for v, _ in pairs]) for g, pairs in fused], targets, priority)

        @leaves_on_timeout
        def wait(store, timeout):
            with store.calls.call("pushpull", keys, step):
                store._customer.wait(reqs, f"pushpull of {_keys_text(keys)}", timeout)
            for f in finish:
                f()
        return Pending(lambda: all(r.done for r in reqs), lambda timeout: wait(self, timeout))

    def _set_optimizer(self, spec):
        with self.calls.call("set_optimizer"):
            self._install_optimizer(spec)

    def _install_optimizer(self, spec):
        # Every earlier push must be merged under the old rule before the new one applies.
        # Rank 0 installs it; the barrier carries its outcome so every worker raises alike.
        self._flush()
        self._barrier(None)
        error = None
        if self.rank == 0:
            reqs = [self._send((s, False), Command.SET_OPTIMIZER, body={"optimizer": spec})
                    for s in range(len(self._servers))]
            try:
                self._customer.wait(reqs, f"set_optimizer {spec.get('name')!r}")
            except PSError as exc:
                error = to_wire(exc)
        notes = self._barrier(None, note=error)
        if notes.get("0"):
            raise from_wire(*notes["0"])

    def _set_compression(self, spec):
        with self.calls.call("set_gradient_compression"):
            # Every worker must send the same encoding: the scheduler compares the configs at
            # a barrier and answers every worker with the same error if they differ.
            self._flush()
            mine = spec.to_wire() if spec is not None else {"type": "none"}
            self._wait_for_all(None, None, agree={"what": "set_gradient_compression", "value": mine},
                               what="set_gradient_compression (every worker must call it, before its "
                                    "first push)")
        super()._set_compression(spec)

    def _barrier(self, timeout, note=None):
        """Wait for every worker; returns the notes workers attached, by rank (as str)."""
        with self.calls.call("barrier"):
            return self._wait_for_all(timeout, note)

    def _wait_for_all(self, timeout, note, agree=None, what="barrier"):
        """``agree``: a value every worker must bring (the scheduler checks; ConfigError if not)."""
        self._flush(timeout)
        body = {"rank": self.rank, "note": note} if note is not None else {}
        if agree is not None:
            body["agree"] = agree
        reply = self._ask_scheduler(Command.BARRIER, body or None, what, timeout)
        return (reply or {}).get("notes", {})

    def _join(self, timeout):
        if self._told_tiered and not self._through_tier:
            raise ConfigError("kv.join() after set_gradient_compression was called after kv.init "
                              "on a host-tier worker: the servers were told this host's pushes "
                              "are host sums, and compressed pushes are not; call "
                              "set_gradient_compression before kv.init (or run with "
                              "PSFRAME_HIERARCHICAL=0)")
        with self.calls.call("join"):
            self._flush(timeout)          # every push is in before the servers hear we left
            if self._through_tier:
                self._tier.join()         # the host's sums go on without this worker
            # as long as the job lives (timeout None): the others may train for hours
            peers.request(self._sched, Command.JOIN, self.name, timeout, "join: waiting for every "
                          "worker to join or finish", msg_id=self._customer.next_id(),
                          check=self._failures.check)
            if self._through_tier:
                self._tier.forget_values()   # the others trained on: pulls fetch the newest

    def _close(self):
        error = None
        try:
            if self._failures.job_alive and not self._failures.crashed:
                self.calls.enter("close")
                try:
                    self._flush()
                except PSError as exc:    # leave the job cleanly all the same, then raise it
                    error = exc
                if self._tier is not None:
                    try:
                        self._tier.close()     # the host's aggregator waits for every worker
                    except PSError as exc:
                        error = error or exc
                self._ask_scheduler(Command.DONE, None, "finishing")
        finally:
            if self._tier is not None:
                self._tier.abandon()
            if self._timeline is not None:
                self._timeline.save()
            self._failures.stop(self)
            self._outgoing.drop()
            self._links.close()
            self._sched.close(0)
            self._ctx.term()
            try:
                atexit.unregister(self.close)
            except Exception:
                pass
        if error is not None:
            raise error

    def _flush(self, timeout=None):
        """Wait until every request is answered (a push counts once the servers merged it)."""
        if self._tier is not None:
            self._tier.flush(timeout)
        self._customer.flush(timeout)

    def _save_checkpoint(self, url, worker_state, storage_options):
        with self.calls.call("save_checkpoint"):
            checkpointing.save_dist(checkpointing.DistClient(self), url, worker_state, storage_options)

    def _load_checkpoint(self, url, storage_options):
        with self.calls.call("load_checkpoint"):
            return checkpointing.load_dist(checkpointing.DistClient(self), url, storage_options)

    def server_stats(self, timeout=None):
        """Counters of every server (pushes per worker, bytes, updates): for tests and benches."""
        reqs = [self._send((s, False), Command.STATS) for s in range(len(self._servers))]
        self._customer.wait(reqs, "stats", timeout)
        return [r.body for r in reqs]

    # -- failures -----------------------------------------------------------------------
    def _abandon(self, exc):
        """Leave the job because ``exc`` ended the user's ``with`` block (or a call timed out,
        ``leaves_on_timeout``): tell the scheduler (unless the job is already gone), then close
        without waiting on steps that other workers will now never complete."""
        if not isinstance(exc, PeerLostError) and self._failures.job_alive:
            self.report_failure(f"{type(exc).__name__}: {exc}")
        self._failures.crashed = True
        self.close()

    def report_failure(self, reason):
        """Tell the scheduler this worker failed, so the job stops now (not after a timeout)."""
        self._failures.report(reason, send=not self._closed)

    # -- checks and sending -------------------------------------------------------------
    def _checked(self, key, value, op):
        """``KVStore._checked`` with a fast path for a list of numpy arrays that all match their
        keys (a model's parameter list: thousands of keys per call). Anything else, and every
        error message, goes through the base class."""
        if type(key) is list and type(value) is list and len(key) == len(value) and not self._closed:
            known, vals = self._keys, []
            for k, v in zip(key, value):
                info = known.get(k) if type(k) is str or type(k) is int else None
                if (info is None or type(v) is not np.ndarray or v.shape != info.shape
                        or v.dtype != NP_DTYPES[info.dtype]):
                    break
                vals.append([v])
            else:
                if len(set(key)) == len(key):
                    return key, vals
        return super()._checked(key, value, op)

    def _send_pushes(self, cmd, plain, fused, targets, priority):
        batches, wait = messages.push_batches(cmd, self._keys, plain, fused, targets, self._backpressure,
                                              self._compressor)
        spec = self._compressor.spec if self._compressor is not None else None
        return [self._send(s, cmd, b, wait_for_send=wait, compression=spec, priority=priority)
                for s, b in batches]

    def _backpressure(self, info):
        self._customer.wait_merged(info, self.config.max_steps_ahead)

    def _send(self, lane, cmd, batch=None, body=None, wait_for_send=False, compression=None, priority=0):
        """Send one request over lane ``(server index, big)`` (see ``routes.lane``; control
        messages go as not big, at once) with ``batch``'s arrays, through the ``SendQueue`` at
        ``priority``. ``wait_for_send``: the arrays are the caller's, so ``Customer.wait_sent``
        must see zmq done with them; the batch's send buffers (ours, reused) are given the
        send's tracker. ``compression``: the spec of the batch's compressed arrays (named in
        the header)."""
        self._failures.check()
        if batch is None:
            msg_id, req = self._customer.new(lane[0], cmd)
            frames = codec.encode(cmd, msg_id, self.name, (), (), body)
            self._links.send(lane, frames, track=False)
        else:
            msg_id, req = self._customer.new(lane[0], cmd, batch.acks, batch.targets)
            if priority:        # the server answers requests completed together by priority
                body = dict(body or {}, priority=priority)
            frames = codec.encode(cmd, msg_id, self.name, batch.descs,
                                  [b.view(np.uint8) for b in batch.bufs], body, compression)
            tracker = self._outgoing.send(lane, frames, self._entries(batch),
                                          sum(b.nbytes for b in batch.bufs), priority)
            for slot in batch.send_buffers:
                slot.tracker = tracker
            req.tracker = tracker if wait_for_send else None
        self._customer.add(msg_id, req)
        return req

    def _entries(self, batch):
        """The stored entries a message touches (a fusion group's members count as the group),
        so the SendQueue keeps each entry's messages in order."""
        known, out = self._keys, set()
        for key in [d.key for d in batch.descs] + [k for k, _ in batch.targets]:
            info = known.get(key)
            out.add(info.group.key if info is not None and info.group is not None else key)
        return out

    def _ask_scheduler(self, cmd, body, what, timeout=None):
        self._failures.check()
        return peers.request(self._sched, cmd, self.name, self.config.timeout if timeout is None else timeout,
                             what, body, msg_id=self._customer.next_id())


def _keys_text(keys):
    return repr(keys[0]) if len(keys) == 1 else f"{len(keys)} keys ({keys[0]!r}, ...)"
