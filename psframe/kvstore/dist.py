"""The worker-side client of the dist kinds: shard requests over servers, send, wait, fill ``out``.

All sockets belong to the calling thread; a wait on one request makes progress on every reply
that arrives meanwhile (ps-lite's ticket idea), so pushes and pulls to different servers are in
flight at once and a pull waits only for its own key. Pulled bytes are received straight into
the caller's ``out`` when it is a contiguous host array (``recv_into``), else into one host
buffer that is then copied to each output (cupy, torch, device lists).
"""
import atexit
import functools
import itertools
import logging
import os
import sys
import time

import numpy as np

from .. import arrays, sharding, timeline
from ..config import EXIT_ABORTED_BY_PEER
from ..errors import JobAbortedError, PeerLostError, PSError, PSTimeoutError, ProtocolError, from_body, from_wire, to_wire
from ..protocol import ArrayDesc, Command, codec
from ..protocol.codec import ITEMSIZE
from ..transport import addresses, peers, sockets
from . import fusion, host_tier
from .base import KVStore

logger = logging.getLogger(__name__)

# Big key-parts travel as several arrays of at most sharding.CHUNK_BYTES, and one call's arrays
# to a server as several messages of at most about MESSAGE_BYTES (so a big key's chunks go one
# per message, and small arrays share one). zmq hands a multipart message over only once all of
# it has arrived, so bounded messages let the server merge and answer the first megabytes while
# later ones are still on the wire, keep its receive queue (memory) small, and let zmq reuse
# warm heap blocks instead of mapping fresh pages for one huge message.
MESSAGE_BYTES = 4 << 20

# A server on the worker's own machine is reached over TCP loopback and, with PSFRAME_IPC, also
# over its unix socket. Each stored entry (key-part or fusion group) keeps to one of the two, so
# its pushes and pulls stay in order: entries of at least UNIX_LANE_BYTES take the unix socket,
# smaller ones TCP. A unix socket's send buffer is fixed at net.core.wmem_default (208 KiB on
# Linux; zmq cannot raise it for ipc), so a 1 MiB message crosses in many sleep/wake rounds, while
# TCP loopback grows its buffers; past a few MiB the unix socket's lighter path wins. Measured
# here with raw pyzmq moving a 1x2 round: 1 MiB 0.81-0.88 ms over TCP, 1.13-1.37 ms over the
# unix socket; 4 MiB 5.6-6.2 ms over TCP, 4.4-5.1 ms over the unix socket.
UNIX_LANE_BYTES = 2 << 20


def _lane(server, entry_bytes):
    """``(server, big)``: the socket an entry of ``entry_bytes`` travels on to ``server``."""
    return server, entry_bytes >= UNIX_LANE_BYTES


def _leaves_on_timeout(method):
    """A data call that timed out may leave zmq holding the caller's arrays (queued zero-copy
    sends, replies still to be received into ``out``): the worker leaves the job instead of
    letting them move later (``DistKVStore._leave_after_timeout``)."""
    @functools.wraps(method)
    def call(self, *args):
        try:
            return method(self, *args)
        except PSTimeoutError as exc:
            self._leave_after_timeout(exc)
            raise
    return call


class _Request:
    """One message to one server, and what to do with its reply."""
    __slots__ = ("server", "cmd", "acks", "targets", "body", "done", "error", "tracker", "t0")

    def __init__(self, server, cmd, acks=(), targets=None):
        self.server, self.cmd = server, cmd
        self.acks = acks            # KeyInfos whose pushes this reply acknowledges
        self.targets = targets or {}   # (key, part) -> flat host array the reply fills
        self.body = None               # the reply's body (stats)
        self.done, self.error, self.tracker, self.t0 = False, None, None, 0.0


class DistKVStore(KVStore):
    """``dist_sync`` / ``dist_async`` / ``dist_device_sync`` worker."""

    def __init__(self, kind, config):
        super().__init__(config.rank, config.num_workers, config.local_rank, config.local_size)
        self.type, self.config = kind, config
        self.sync = kind != "dist_async"
        self.name = f"worker:{config.rank}"
        self._summed = False         # pushes carry host sums (the host tier's uplink)
        self._tier = None
        self._ctx = sockets.new_context()
        try:
            self._sched = sockets.dealer(self._ctx, config.scheduler)
            book = peers.register(self._sched, config, "worker", config.rank)
            self._connect(book)
        except BaseException:
            self._ctx.destroy(linger=0)     # closes whatever sockets were made
            raise
        self._part_acks = {}         # key -> merged pushes per part (keys cut into parts)
        self._timeline = timeline.for_process(config, "worker", config.rank)
        for i in range(len(self._servers) if self._timeline is not None else 0):
            self._timeline.name_thread(i, f"requests to server {i}")
        self._crashed = False
        self._heartbeat = peers.HeartbeatThread(self._ctx, config, self.name)
        self._heartbeat.start()
        _install_excepthook(self)
        atexit.register(self.close)
        self._tier = host_tier.join(self)     # None: this worker talks to the servers itself
        logger.info("worker %d of %d connected to servers at %s", self.rank, self.num_workers,
                    ", ".join(f"{a} ({loc})" if loc else a
                              for a, loc in zip(self.server_addresses, self.local_addresses)))

    def _connect(self, book):
        """Sockets to every server of the address ``book`` (TCP, plus the unix lane)."""
        config = self.config
        self._servers = []           # per server: its TCP socket (small entries, control)
        self._lanes = []             # per server: (TCP socket, socket for big entries)
        self.server_addresses = list(book["servers"])
        local = book.get("servers_local") or [""] * len(self.server_addresses)
        self.local_addresses = [loc if config.ipc and loc and addresses.local_reachable(loc) else None
                                for loc in local]     # the server's unix socket, on this machine
        for address, loc in zip(self.server_addresses, self.local_addresses):
            tcp = sockets.dealer(self._ctx, address)
            self._servers.append(tcp)
            self._lanes.append((tcp, sockets.dealer(self._ctx, loc) if loc else tcp))
        self._poller = sockets.Poller([*self._servers, *(b for t, b in self._lanes if b is not t),
                                       *([self._sched] if self._sched is not None else [])])
        self._ids = itertools.count(1)
        self.sent_messages = {"tcp": 0, "unix": 0}    # requests per transport (diagnostics)
        self._requests = {}          # id -> _Request (in flight)
        self._errors = []            # errors of requests nobody waits for (pushes)

    @classmethod
    def uplink(cls, owner):
        """The host aggregator's own connection to the servers, for a thread of ``owner``'s
        process: its sockets, sending host sums as ``owner``'s rank (the first of the host),
        sharing ``owner``'s keys (their parts, groups and step counts are the uplink's from now
        on), its heartbeat and its timeline (the host's requests appear on local rank 0's rows).
        No scheduler link: ``owner`` keeps that."""
        self = cls.__new__(cls)
        KVStore.__init__(self, owner.rank, owner.num_workers, owner.local_rank, owner.local_size)
        self.type, self.config, self.sync, self.name = owner.type, owner.config, owner.sync, owner.name
        self._summed, self._tier, self._sched, self._crashed = True, None, None, False
        self._ctx = sockets.new_context()
        self._connect({"servers": owner.server_addresses,
                       "servers_local": [loc or "" for loc in owner.local_addresses]})
        self._keys, self._part_acks = owner._keys, owner._part_acks
        self._heartbeat, self._timeline = owner._heartbeat, owner._timeline
        return self

    def close_uplink(self):
        for s in {sock for lane in self._lanes for sock in lane}:
            s.close(0)
        self._ctx.term()

    # -- the kind's operations ----------------------------------------------------------
    @_leaves_on_timeout
    def _init(self, keys, values):
        value_of = dict(zip(keys, values))
        units = fusion.plan(keys, [self._keys[k] for k in keys], self.config.fuse_key_bytes,
                            self.config.bigarray_bound, len(self._servers))
        metas = []
        for u in units:
            if type(u) is fusion.Group:
                metas.append([u.key, u.size, u.size * np.dtype(u.dtype).itemsize, u.names])
            else:
                info = self._keys[u]
                metas.append([u, info.size, info.size * np.dtype(info.dtype).itemsize])
        placed = self._ask_scheduler(Command.PLACE, {"keys": metas}, "placing keys")["servers"]
        batches = _Batches(lambda: ([], [], [], []))    # descs, buffers, meta, group members
        for unit, server in zip(units, placed):
            if type(unit) is fusion.Group:
                members = self._place_group(unit, server)
                pieces = [(server, ArrayDesc(unit.key, 0, unit.dtype, (unit.size,)), members,
                           lambda g=unit: np.concatenate([value_of[k].reshape(-1) for k in g.names]))]
            else:
                info = self._keys[unit]
                info.parts = self._parts_of(info, server)
                self._part_acks[unit] = [0] * len(info.parts)
                flat = value_of[unit].reshape(-1)
                pieces = [(p.server, ArrayDesc(unit, p.part, info.dtype, self._part_shape(info, p)), None,
                           lambda flat=flat, p=p: flat[p.start:p.stop]) for p in info.parts]
            for where, desc, members, value in pieces:
                descs, bufs, meta, groups = batches.add(_lane(where, desc.nbytes),
                                                        desc.nbytes if self.rank == 0 else 64)
                groups.append(members)
                if self.rank == 0:
                    descs.append(desc)
                    bufs.append(value())
                else:
                    meta.append(desc.to_wire())
        host = [self.rank - self.local_rank, self.local_size, self.config.host]
        reqs = [self._send(s, Command.INIT, descs, bufs, {"meta": meta, "sync": self.sync, "groups": groups,
                                                          "host": host},
                           wait_for_send=True)
                for s, (descs, bufs, meta, groups) in batches]
        self._wait(reqs, "init of keys %s" % keys[:5])
        if self._tier is not None:
            self._tier.init(keys)

    def _parts_of(self, info, server):
        return sharding.parts_of(server, info.size, len(self._servers), np.dtype(info.dtype).itemsize)

    def _place_group(self, group, server):
        """Record where ``group`` lives; its keys can also travel alone, to the same server."""
        group.server = server
        for m, (k, info) in enumerate(zip(group.names, group.infos)):
            info.group, info.member = group, m
            info.parts = self._parts_of(info, server)
            self._part_acks[k] = [0]
        return group.wire_members()

    @_leaves_on_timeout
    def _push(self, keys, values, priority):
        if self._tier is not None:
            return self._tier.push(keys, values)
        self._wait_sent(self._send_pushes(Command.PUSH, *self._by_group(keys, values), {}))
        self._raise_deferred()

    @_leaves_on_timeout
    def _pull(self, keys, outs, priority):
        if self._tier is not None:
            return self._tier.pull(keys, outs)
        reqs, finish = self._send_pulls(keys, outs)
        self._wait(reqs, f"pull of {_keys_text(keys)}")
        for f in finish:
            f()

    def _send_pulls(self, keys, outs):
        """Send the pulls of ``keys`` into ``outs``; ``(requests, steps to run once they are done)``."""
        plain, fused = self._by_group(keys, outs)
        batches, finish = _Batches(lambda: ([], {})), []
        for k, out in plain:
            info = self._keys[k]
            flat, copy_back = self._landing(info, out)
            finish.append(copy_back)
            for p in info.parts:
                desc = ArrayDesc(k, p.part, info.dtype, self._part_shape(info, p), info.pushes)
                target = flat[p.start:p.stop]
                meta, targets = batches.add(self._lane(info, p), target.nbytes)
                meta.append(desc.to_wire())
                targets[(k, p.part)] = target
        for g, group_outs in fused:
            flat = g.landing()
            meta, targets = batches.add(self._group_lane(g), flat.nbytes)
            meta.append(ArrayDesc(g.key, 0, g.dtype, (g.size,), g.infos[0].pushes).to_wire())
            targets[(g.key, 0)] = flat
            finish.append(lambda g=g, outs=group_outs: g.unpack(outs))
        reqs = [self._send(s, Command.PULL, (), (), {"meta": meta}, targets=targets)
                for s, (meta, targets) in batches]
        return reqs, finish

    @_leaves_on_timeout
    def _pushpull(self, keys, values, outs, priority):
        if self._tier is not None:
            return self._tier.pushpull(keys, values, outs)
        reqs, finish = self._send_pushpulls(keys, values, outs)
        self._wait(reqs, f"pushpull of {_keys_text(keys)}")
        for f in finish:
            f()

    def _send_pushpulls(self, keys, values, outs):
        """Send the pushpulls of ``keys``; ``(requests, steps to run once they are done)``."""
        plain, fused = self._by_group(keys, list(zip(values, outs)))
        finish, targets = [], {}
        for k, (_, out) in plain:
            info = self._keys[k]
            flat, copy_back = self._landing(info, out)
            finish.append(copy_back)
            for p in info.parts:
                targets[(k, p.part)] = flat[p.start:p.stop]
        for g, pairs in fused:
            targets[(g.key, 0)] = g.landing()
            finish.append(lambda g=g, outs=[o for _, o in pairs]: g.unpack(outs))
        reqs = self._send_pushes(Command.PUSHPULL, [(k, v) for k, (v, _) in plain],
                                 [(g, [v for v, _ in pairs]) for g, pairs in fused], targets)
        return reqs, finish

    def _set_optimizer(self, spec):
        # Every earlier push must be merged under the old rule before the new one applies.
        # Rank 0 installs it; the barrier carries its outcome so every worker raises alike.
        self._flush()
        self._barrier(None)
        error = None
        if self.rank == 0:
            reqs = [self._send((s, False), Command.SET_OPTIMIZER, (), (), {"optimizer": spec})
                    for s in range(len(self._servers))]
            try:
                self._wait(reqs, f"set_optimizer {spec.get('name')!r}")
            except PSError as exc:
                error = to_wire(exc)
        notes = self._barrier(None, note=error)
        if notes.get("0"):
            raise from_wire(*notes["0"])

    def _barrier(self, timeout, note=None):
        """Wait for every worker; returns the notes workers attached, by rank (as str)."""
        self._flush(timeout)
        body = {"rank": self.rank, "note": note} if note is not None else None
        reply = self._ask_scheduler(Command.BARRIER, body, "barrier", timeout)
        return (reply or {}).get("notes", {})

    def _close(self):
        error = None
        try:
            if self._heartbeat.reason is None and not self._crashed:
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
            global _live
            if _live is self:
                _live = None
            if self._timeline is not None:
                self._timeline.save()
            self._heartbeat.stop()
            self._heartbeat.join(timeout=5)
            for s in {*(sock for lane in self._lanes for sock in lane), self._sched}:
                s.close(0)
            self._ctx.term()
            try:
                atexit.unregister(self.close)
            except Exception:
                pass
        if error is not None:
            raise error

    def server_stats(self, timeout=None):
        """Counters of every server (pushes per worker, bytes, updates): for tests and benches."""
        reqs = [self._send((s, False), Command.STATS, (), ()) for s in range(len(self._servers))]
        self._wait(reqs, "stats", timeout)
        return [r.body for r in reqs]

    def _leave_after_timeout(self, exc):
        """After a timed-out data call, queued sends would go out whenever the server reads
        again, carrying whatever the caller writes into its arrays from now on, and a late
        reply would land in an ``out`` the caller has moved on from: a silent wrong result.
        So the worker leaves now: the job is told (it stops, as for any failed worker), the
        sockets close without linger (queued sends are dropped), and later calls say why."""
        self._closed_by = f"a call timed out: {exc}"
        self._abandon(exc)

    def _abandon(self, exc):
        """Leave the job because ``exc`` ended the user's ``with`` block: tell the scheduler
        (unless the job is already gone), then close without waiting on steps that other
        workers will now never complete."""
        if not isinstance(exc, PeerLostError) and self._heartbeat.reason is None:
            self.report_failure(f"{type(exc).__name__}: {exc}")
        self._crashed = True
        self.close()

    def report_failure(self, reason):
        """Tell the scheduler this worker failed, so the job stops now (not after a timeout)."""
        self._crashed = True     # close() at exit must not wait on a job we just failed
        if not self._closed:
            sockets.send_frames(self._sched, codec.encode(Command.ABORT, 0, self.name,
                                                          body={"reason": reason}))

    def _checked(self, key, value, op):
        """``KVStore._checked`` with a fast path for a list of numpy arrays that all match their
        keys (a model's parameter list: thousands of keys per call). Anything else, and every
        error message, goes through the base class."""
        if type(key) is list and type(value) is list and len(key) == len(value) and not self._closed:
            known, vals = self._keys, []
            for k, v in zip(key, value):
                info = known.get(k) if type(k) is str or type(k) is int else None
                if (info is None or type(v) is not np.ndarray or v.shape != info.shape
                        or v.dtype != _NP_DTYPES[info.dtype]):
                    break
                vals.append([v])
            else:
                if len(set(key)) == len(key):
                    return key, vals
        return super()._checked(key, value, op)

    # -- building requests --------------------------------------------------------------
    def _part_shape(self, info, part):
        return info.shape if len(info.parts) == 1 else (part.size,)

    def _by_group(self, keys, items):
        """``(plain, fused)``: ``[(key, item)]`` to send key by key, and ``[(group, [item per
        member])]`` for groups this call names whole and in step (they go as one array)."""
        plain, calls, known = [], {}, self._keys
        for k, item in zip(keys, items):
            info = known[k]
            g = info.group
            if g is None:
                plain.append((k, item))
                continue
            members = calls.get(g)
            if members is None:
                members = calls[g] = [None] * len(g.names)
            members[info.member] = (k, item)
        fused = []
        for g, members in calls.items():
            if all(m is not None for m in members) and g.in_step():
                fused.append((g, [item for _, item in members]))
            else:
                plain.extend(m for m in members if m is not None)
        return plain, fused

    def _send_pushes(self, cmd, plain, fused, targets):
        batches, owned = _Batches(lambda: ([], [], [], {}, [])), True
        for k, v in plain:
            info = self._keys[k]
            self._backpressure(info)
            host, copied = self._host(v)
            owned = owned and copied            # our copy: no need to wait for the wire
            info.pushes += 1
            flat = host.reshape(-1)
            for i, p in enumerate(info.parts):
                buf = flat[p.start:p.stop]
                descs, bufs, acks, tg, _ = batches.add(self._lane(info, p), buf.nbytes)
                descs.append(ArrayDesc(k, p.part, info.dtype, self._part_shape(info, p), info.pushes))
                bufs.append(buf)
                acks.append((info, k, i))
                if (k, p.part) in targets:
                    tg[(k, p.part)] = targets[(k, p.part)]
        for g, vals in fused:
            flats = []
            for info, v in zip(g.infos, vals):
                self._backpressure(info)
                flats.append(self._host(v)[0].reshape(-1))
                info.pushes += 1
            buf, slot = g.pack(flats)           # our copy, reused once zmq has sent it
            descs, bufs, acks, tg, slots = batches.add(self._group_lane(g), buf.nbytes)
            descs.append(ArrayDesc(g.key, 0, g.dtype, (g.size,), g.infos[0].pushes))
            bufs.append(buf)
            acks.append((g, g.key, 0))
            slots.append(slot)
            if (g.key, 0) in targets:
                tg[(g.key, 0)] = targets[(g.key, 0)]
        # A pushpull's reply proves its bytes left (the server answers only once it has them
        # all), so only a push must track zero-copy sends of the caller's arrays.
        wait = not owned and cmd is Command.PUSH
        return [self._send(s, cmd, descs, bufs, acks=acks, targets=tg, wait_for_send=wait, slots=slots)
                for s, (descs, bufs, acks, tg, slots) in batches]

    @staticmethod
    def _host(value):
        if type(value) is np.ndarray and value.flags.c_contiguous:
            return value, False
        return arrays.to_host_copied(value)

    def _landing(self, info, outs):
        """Where pulled bytes land: the first output itself when it is a contiguous host
        array, else a host buffer copied to every output afterwards."""
        first = outs[0]
        if type(first) is not np.ndarray or not first.flags.c_contiguous or not first.flags.writeable:
            first = arrays.host_view(first)
        if first is None:
            first = np.empty(info.shape, dtype=info.dtype)
            rest = outs
        else:
            rest = outs[1:]

        def copy_back():
            for o in rest:
                arrays.copy_into(o, first)
        return first.reshape(-1), copy_back

    def _backpressure(self, info):
        """Bound unmerged pushes per key (server memory stays bounded)."""
        if info.pushes - info.acked >= self.config.max_steps_ahead:
            self._progress_until(lambda: info.pushes - info.acked < self.config.max_steps_ahead,
                                 f"backpressure: {info.pushes - info.acked} unmerged pushes")

    def _lane(self, info, part):
        """Where a key-part travels (``_lane``); a group's member goes its group's way."""
        if info.group is not None:
            return self._group_lane(info.group)
        return _lane(part.server, part.size * ITEMSIZE[info.dtype])

    @staticmethod
    def _group_lane(group):
        return _lane(group.server, group.size * ITEMSIZE[group.dtype])

    def _send(self, lane, cmd, descs, bufs, body=None, acks=(), targets=None, wait_for_send=False,
              slots=()):
        """Send one request over lane ``(server index, big)`` (see ``_lane``; control messages
        go as not big). ``wait_for_send``: ``bufs`` are the caller's, so ``_wait_sent`` must
        see zmq done with them; ``slots``: our reused buffers, given the send's tracker."""
        self._heartbeat.check()
        server, big = lane
        tcp, sock = self._lanes[server][0], self._lanes[server][big]
        self.sent_messages["tcp" if sock is tcp else "unix"] += 1
        msg_id = next(self._ids)
        req = _Request(server, cmd, acks, targets)
        if self._timeline is not None:
            req.t0 = timeline.now_us()
        if self._summed and (cmd is Command.PUSH or cmd is Command.PUSHPULL):
            body = dict(body or (), summed=True)
        frames = codec.encode(cmd, msg_id, self.name, descs, [b.view(np.uint8) for b in bufs], body)
        tracker = sockets.send_frames(sock, frames, track=wait_for_send or bool(slots))
        for slot in slots:
            slot[1] = tracker
        req.tracker = tracker if wait_for_send else None
        self._requests[msg_id] = req
        return req

    def _wait_sent(self, reqs):
        """Return once zmq no longer references the caller's buffers (zero-copy sends)."""
        for r in reqs:
            if r.tracker is not None:
                # a tracker's completion is no socket event (and the push's ack may already
                # be in): look at it every millisecond, not at the next reply
                self._progress_until(lambda: r.tracker.done, "sending a push", step=0.001)
                r.tracker = None

    # -- waiting and receiving ----------------------------------------------------------
    def _wait(self, reqs, what, timeout=None):
        self._progress_until(lambda: all(r.done for r in reqs), what, timeout)
        for r in reqs:
            if r.error is not None:
                raise r.error

    def _flush(self, timeout=None):
        if self._tier is not None:
            self._tier.flush(timeout)
        self._progress_until(lambda: not self._requests, "finishing outstanding requests", timeout)
        self._raise_deferred()

    def _raise_deferred(self):
        if self._errors:
            err, self._errors = self._errors[0], []
            raise err

    def _progress_until(self, cond, what, timeout=None, step=0.1):
        timeout = self.config.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not cond():
            self._heartbeat.check()
            self._raise_deferred()
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = sorted({r.server for r in self._requests.values() if not r.done})
                raise PSTimeoutError(
                    f"{what}: not done within {timeout:g}s (PSFRAME_TIMEOUT); waiting on servers "
                    f"{waiting}. In dist_sync every worker must push each key the same number of "
                    f"times; a worker that stopped pushing stalls the step")
            self._progress(min(left, step))

    def _progress(self, timeout):
        for sock in self._poller.poll(timeout):
            if sock is self._sched:
                self._receive_from_scheduler()
                continue
            while sockets.readable(sock):
                self._receive(sock)

    def _receive_from_scheduler(self):
        """Between requests the scheduler only speaks to abort the job (it may reach this
        socket before the heartbeat thread's: right after start-up)."""
        while sockets.readable(self._sched):
            msg = codec.decode(sockets.recv_frames(self._sched))
            if msg.cmd is Command.ABORT:
                raise JobAbortedError(f"job aborted by the scheduler: {msg.body.get('reason')}")

    def _receive(self, sock):
        head = sock.recv(copy=False)
        try:
            msg = codec.decode_header(head.buffer)
        except ProtocolError:
            sockets.drain_rest(sock)
            raise
        req = self._requests.pop(msg.id, None)
        if req is None:
            sockets.drain_rest(sock)
            logger.warning("ignored a reply to unknown request %d", msg.id)
            return
        try:
            self._read_arrays(sock, msg, req)
        except ProtocolError as exc:
            req.error = exc
        if sockets.drain_rest(sock) and req.error is None:
            req.error = ProtocolError(f"reply {msg.id} carries more frames than its header declares")
        req.done = True
        if self._timeline is not None:
            self._trace(req)
        if msg.cmd is Command.ERROR:
            req.error = from_body(msg.body)
            if req.cmd is Command.PUSH:
                self._errors.append(req.error)
            return
        if req.cmd is Command.STATS:
            req.body = msg.body
        for info, key, i in req.acks:
            if type(info) is fusion.Group:
                for member in info.infos:
                    member.acked += 1
            elif len(info.parts) == 1:
                info.acked += 1
            else:     # a push is merged once every part of it is
                counts = self._part_acks[key]
                counts[i] += 1
                info.acked = min(counts)

    def _trace(self, req):
        """One timeline span per key of a finished request (send to reply, on the server's row)."""
        end = timeline.now_us()
        if req.cmd in (Command.PUSH, Command.PUSHPULL):
            keys = dict.fromkeys(k for _, k, _ in req.acks)
        elif req.cmd is Command.PULL:
            keys = dict.fromkeys(k for k, _ in req.targets)
        else:
            keys = {req.cmd.value: None}
        for k in keys:
            self._timeline.complete(f"{req.cmd.value} {timeline.key_name(k)}", req.cmd.value, req.t0, end,
                                    tid=req.server)

    def _read_arrays(self, sock, msg, req):
        for i, desc in enumerate(msg.arrays):
            if not sock.getsockopt(sockets.zmq.RCVMORE):
                raise ProtocolError(f"reply {msg.id} declares {len(msg.arrays)} arrays, has {i}")
            target = req.targets.get((desc.key, desc.part))
            if target is None or target.nbytes != desc.nbytes or target.dtype != _NP_DTYPES[desc.dtype]:
                sock.recv(copy=False)      # consume the frame that does not fit
                raise ProtocolError(f"reply for key {desc.key!r} part {desc.part}: {desc.dtype}"
                                    f"{list(desc.shape)} does not fit the pull's output")
            n = sock.recv_into(memoryview(target).cast("B"))
            if n != desc.nbytes:
                raise ProtocolError(f"reply for key {desc.key!r}: frame has {n} bytes, header "
                                    f"declares {desc.nbytes}")

    def _ask_scheduler(self, cmd, body, what, timeout=None):
        self._heartbeat.check()
        return peers.request(self._sched, cmd, self.name, self.config.timeout if timeout is None else timeout,
                             what, body, msg_id=next(self._ids))


_live = None          # the open DistKVStore of this process
_prev_hook = None


def _excepthook(exc_type, exc, tb):
    """Uncaught exceptions: a worker's own failure stops the job at once (not after a
    heartbeat timeout); a worker stopped by another's failure exits EXIT_ABORTED_BY_PEER so the
    launcher does not take it for the root cause."""
    if issubclass(exc_type, PeerLostError):
        _prev_hook(exc_type, exc, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_ABORTED_BY_PEER)
    if _live is not None:
        try:
            _live.report_failure(f"uncaught {exc_type.__name__}: {exc}")
        except Exception:   # the report is best effort; the traceback below is what matters
            pass
    _prev_hook(exc_type, exc, tb)


def _install_excepthook(store):
    global _live, _prev_hook
    _live = store
    if _prev_hook is None:     # once per process; stays for the victims' exit status
        _prev_hook = sys.excepthook
        sys.excepthook = _excepthook


class _Batches:
    """Message contents per destination (a lane ``(server, big)``, see ``_lane``), a new message
    whenever the current one would pass ``MESSAGE_BYTES`` (a message always takes at least one
    array). Iterates ``(destination, contents)`` in the order the messages were opened."""

    def __init__(self, make):
        self.make = make
        self.open = {}        # destination -> [contents, bytes]
        self.all = []         # (destination, contents)

    def add(self, to, nbytes):
        """The contents of the message to ``to`` that the next ``nbytes`` go into."""
        cur = self.open.get(to)
        if cur is None or (cur[1] and cur[1] + nbytes > MESSAGE_BYTES):
            cur = self.open[to] = [self.make(), 0]
            self.all.append((to, cur[0]))
        cur[1] += nbytes
        return cur[0]

    def __iter__(self):
        return iter(self.all)


_NP_DTYPES = {name: np.dtype(name) for name in arrays.DTYPES}


def _keys_text(keys):
    return repr(keys[0]) if len(keys) == 1 else f"{len(keys)} keys ({keys[0]!r}, ...)"
