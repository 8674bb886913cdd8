"""The server loop: validate every message, hand it to the shard, send the replies.

A request may name many key-parts; its one reply goes out when every part is answered (a sync
pull waits for its step). A malformed message gets an error reply and the loop goes on.
"""
import importlib
import importlib.util
import logging
import os
import time

import numpy as np

from .. import timeline
from ..config import EXIT_ABORTED_BY_PEER
from ..errors import OptimizerError, ProtocolError, as_reply
from ..protocol import ArrayDesc, Command, codec, rows
from ..transport import addresses, peers, sockets
from ..transport.link import SchedulerLink
from ..transport.requests import RequestLoop
from .budget import MemoryBudget
from .entry import Reply
from . import checkpoint_tasks
from .shard import ShardState
from .sparse import SparseTables

logger = logging.getLogger(__name__)


PRUNE_INTERVAL = 0.01    # seconds between sweeps of finished zero-copy replies


class _Pending:
    __slots__ = ("cmd", "remaining", "arrays", "error", "priority")

    def __init__(self, cmd, remaining, priority=0):
        self.cmd, self.remaining, self.arrays, self.error = cmd, remaining, [], None
        self.priority = priority


def import_user_modules(paths):
    """Import the job owner's modules (``--optimizer-module``) so their optimizers register.
    This is the only code a server runs beyond psframe: names from the wire never import."""
    for i, path in enumerate(paths):
        if path.endswith(".py"):
            spec = importlib.util.spec_from_file_location(f"psframe_user_module_{i}", path)
            if spec is None:
                raise OptimizerError(f"cannot import optimizer module {path!r}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            importlib.import_module(path)
        logger.info("imported user module %s", path)


class ServerService(RequestLoop):
    who = "server"

    def __init__(self, config):
        self.config = config
        # two I/O threads: workers' connections are spread over them, so the bytes of two
        # workers move in parallel (1 MiB pushpull, 1 server x 2 workers: about 7% faster)
        self.ctx = sockets.new_context(io_threads=2)
        self.guard = sockets.SendGuard(timeout=config.timeout)
        self.shard = ShardState(config.num_workers, guard=self.guard, owns_pushes=True)
        self.sparse = SparseTables(config.num_workers, counters=self.shard.counters, guard=self.guard)
        host = config.bind_host or config.host
        _, port = self.bind_router(config, lambda security: sockets.router_bind_random(
            self.ctx, peers.bind_ip(host), security))
        self.address = addresses.tcp(config.host, port)
        self.local_address = self._bind_local() if config.ipc else ""
        self.name = f"server:{config.server_rank}"
        self.budget = MemoryBudget(config.server_memory_bytes, self.name)
        self.pending = {}
        self.bytes_in_wire = 0       # pushed array frames as received (compressed, if they were)
        self.timeline = timeline.for_process(config, "server", config.server_rank)
        self._merge_start = {}       # (key, part, step) -> first push's arrival (timeline only)
        self._arrived = 0.0          # when the message being handled arrived (timeline only)
        self.checkpoint_task = None  # a checkpoint save/load in flight (checkpoint_tasks)
        self.held = []               # (peer, msg) that would change the shard meanwhile

    def run(self):
        """Register, then serve until the scheduler says shutdown (0) or abort (1)."""
        import_user_modules(self.config.user_modules)
        sched = sockets.dealer(self.ctx, self.config.scheduler, security=self.security, peer="scheduler")
        try:
            peers.register(sched, self.config, "server", self.config.server_rank, self.address,
                           self.local_address)
            logger.info("serving at %s", self.address)
            return self._loop(sched)
        finally:
            sched.close(0)
            self.close_router(sockets.LINGER_MS)
            sockets.end_context(self.ctx)
            if self.local_address:
                addresses.remove_local(self.local_address)
            if self.timeline is not None:
                self.timeline.save()

    def _bind_local(self):
        """Also listen on a unix socket in a private directory, authenticated as TCP is:
        workers on this machine skip TCP (about a fifth less time per byte on loopback).
        Returns the address, or "" if there is none."""
        address = addresses.new_local()
        if address is None:
            return ""
        try:
            self.sock.bind(address)
        except Exception as exc:   # the TCP address still serves everyone
            logger.info("no local unix socket (%s); workers on this host use TCP", exc)
            addresses.remove_local(address)
            return ""
        return address

    def _loop(self, sched):
        link = SchedulerLink(self.ctx, self.config, self.name, sock=sched,
                             on_message=self._from_scheduler)
        next_prune = time.monotonic()
        poller = sockets.Poller([self.sock, sched])
        while not link.ended:
            now = time.monotonic()
            link.beat(now)
            if now >= next_prune:      # forget sent replies, so their buffers can be freed
                self.guard.prune()
                self.housekeeping(now)
                next_prune = now + PRUNE_INTERVAL
            # a checkpoint task in flight is looked at every millisecond: its reply is due when
            # it ends (a save or load of 100 MiB takes tens of milliseconds)
            ready = poller.poll(0.001 if self.checkpoint_task else link.poll_interval)
            if self.checkpoint_task is not None and self.checkpoint_task.done():
                self._finish_checkpoint_task()
            if self.sock in ready:
                self.drain(limit=1000)   # bounded, so heartbeats still go out under a flood
            if sched in ready:
                link.receive()
            else:
                link.check_silence(time.monotonic())
        if link.shutdown:
            logger.info("shutdown: pushes received per worker rank: %s", self.shard.stats()["pushes"])
            return 0
        logger.error("%s", link.reason)
        return EXIT_ABORTED_BY_PEER

    def _from_scheduler(self, msg):
        """A worker left (finished or joined): steps waiting on it complete or fail now."""
        if msg.cmd is not Command.LEFT:
            logger.warning("ignored %r from the scheduler", msg.cmd.value)
            return
        rank, joined = msg.body.get("rank"), msg.body.get("joined")
        if type(rank) is not int or not 0 <= rank < self.config.num_workers or type(joined) is not bool:
            logger.warning("ignored a malformed 'left' from the scheduler: %r", msg.body)
            return
        self._deliver(self.shard.leave(rank, joined) + self.sparse.leave(rank, joined))

    # -- the receive-and-reply loop's hooks and the handlers --------------------------------
    def received(self, msg):
        if self.timeline is not None:
            self._arrived = timeline.now_us()

    def failed(self, peer, msg_id, exc):
        self.pending.pop((peer, msg_id), None)   # its other parts' answers are dropped
        super().failed(peer, msg_id, exc)

    def _finish_checkpoint_task(self):
        """Reply to the finished save/load, then handle the messages held back meanwhile."""
        task, self.checkpoint_task = self.checkpoint_task, None
        peer, msg_id = task.token
        try:
            body = task.finish()
        except Exception as exc:
            exc = as_reply(exc, self.who)
            logger.error("checkpoint failed: %s", exc)
            self.failed(peer, msg_id, exc)
        else:
            self.send_raw(peer, codec.encode(Command.OK, msg_id, self.name, body=body))
        held, self.held = self.held, []
        for i, (peer, msg) in enumerate(held):
            if self.checkpoint_task is not None:      # a held message started another task
                self.held.extend(held[i:])
                return
            try:
                self.handle(peer, msg)
            except Exception as exc:
                self.failed(peer, msg.id, as_reply(exc, self.who))

    def handle(self, peer, msg):
        if self.checkpoint_task is not None and msg.cmd in checkpoint_tasks.HELD:
            self.held.append((peer, msg))
            return
        rank = codec.sender_rank(msg.sender, "worker", self.config.num_workers)
        try:
            self.handler(msg)(peer, msg, rank)
        finally:     # after the handler: an init names the sender's host first
            self.shard.hosts.count_message(rank, sum(d.nbytes for d in msg.arrays))

    @staticmethod
    def _summed(msg):
        """Whether a push message carries host sums (the host tier's aggregator sent it)."""
        summed = msg.body.get("summed", False)
        if type(summed) is not bool:
            raise ProtocolError(f"push body.summed is {summed!r}, not a bool")
        return summed

    def handle_init(self, peer, msg, rank):
        descs = list(msg.arrays) + codec.decode_meta(msg.body)
        sync = msg.body.get("sync", True)
        if type(sync) is not bool:
            raise ProtocolError(f"init body.sync is {sync!r}, not a bool")
        groups = codec.decode_groups(msg.body, len(descs))
        host = msg.body.get("host")
        if host is not None:
            if (type(host) is not list or len(host) not in (3, 4) or type(host[0]) is not int
                    or type(host[1]) is not int or type(host[2]) is not str
                    or len(host) == 4 and type(host[3]) is not bool):
                raise ProtocolError(f"init body.host is {host!r}, not [first rank, workers, name, tiered]")
            self.shard.hosts.set(rank, *host)
        arrays = [codec.as_array(d, b) for d, b in zip(msg.arrays, msg.buffers)]
        arrays += [None] * (len(descs) - len(arrays))
        self.budget.charge(descs, self.shard.keys.__contains__)
        token = self._expect(peer, msg, len(descs))
        for desc, array, members in zip(descs, arrays, groups):
            self._deliver(self.shard.init(rank, desc, array, token, sync, members, adopt=True))

    def handle_push(self, peer, msg, rank):
        summed = self._summed(msg)
        token = self._expect(peer, msg, len(msg.arrays))
        push, frombuffer, replies = self.shard.push, np.frombuffer, []
        for desc, buf in zip(msg.arrays, msg.buffers):
            # a per-array hot path when a model's many small keys come in one message
            self.bytes_in_wire += buf.nbytes
            array = (frombuffer(buf, desc.dtype) if desc.compression is None
                     else codec.as_array(desc, buf)).reshape(desc.shape)
            replies += push(rank, desc, array, token, summed)
        self._deliver(replies)
        if self.timeline is not None:
            self._trace_merges(msg)

    def handle_pull(self, peer, msg, rank):
        descs = codec.decode_meta(msg.body)
        token = self._expect(peer, msg, len(descs))
        for desc in descs:
            self._deliver(self.shard.pull(rank, desc, token))

    def handle_pushpull(self, peer, msg, rank):
        summed = self._summed(msg)
        token = self._expect(peer, msg, 2 * len(msg.arrays))
        push, pull, frombuffer, replies = self.shard.push, self.shard.pull, np.frombuffer, []
        for desc, buf in zip(msg.arrays, msg.buffers):
            self.bytes_in_wire += buf.nbytes
            array = (frombuffer(buf, desc.dtype) if desc.compression is None
                     else codec.as_array(desc, buf)).reshape(desc.shape)
            replies += push(rank, desc, array, token, summed)
            replies += pull(rank, desc, token)
        self._deliver(replies)
        if self.timeline is not None:
            self._trace_merges(msg)

    def _trace_merges(self, msg):
        """Timeline: a step's merge spans from its first push's arrival to its completion."""
        arrived, end = self._arrived, timeline.now_us()
        for desc in msg.arrays:
            ident = (desc.key, desc.part, desc.step)
            start = self._merge_start.setdefault(ident, arrived or end)
            if self.shard.step_complete(desc):
                del self._merge_start[ident]
                self.timeline.complete(f"merge {timeline.key_name(desc.key)}", "merge", start, end, tid=desc.part,
                                       args={"step": desc.step, "part": desc.part})

    # -- sparse keys: one message names one table's rows on this server --------------------
    def handle_sparse_init(self, peer, msg, rank):
        key, dtype, shape, lo, hi, sync, offset, chunk, last = rows.init_table(msg)
        # the budget holds this server's rows as part -1 of the key (dense parts count from 0)
        self.budget.charge([ArrayDesc(key, -1, dtype, (hi - lo, shape[1]))],
                           lambda ident: ident[0] in self.sparse.tables)
        token = self._expect(peer, msg, 1)
        self._deliver(self.sparse.init(rank, key, dtype, shape, lo, hi, token, sync, offset, chunk, last))

    def handle_sparse_push(self, peer, msg, rank):
        desc, ids, values, _ = rows.row_arrays(msg, False)
        self.bytes_in_wire += ids.nbytes + values.nbytes
        self._deliver(self.sparse.push(rank, desc.key, desc.step, ids, values, self._expect(peer, msg, 1)))

    def handle_sparse_pull(self, peer, msg, rank):
        desc, ids = rows.pull_ids(msg)
        self._deliver(self.sparse.pull(rank, desc.key, desc.step, ids, self._expect(peer, msg, 1), desc.part))

    def handle_sparse_pushpull(self, peer, msg, rank):
        desc, ids, values, pulled = rows.row_arrays(msg, True)
        self.bytes_in_wire += ids.nbytes + values.nbytes
        token = self._expect(peer, msg, 2)
        replies = self.sparse.push(rank, desc.key, desc.step, ids, values, token)
        refused = [r for r in replies if r.token == token and r.error is not None]
        if refused or not pulled.size:   # nothing to pull: the push's ack is the answer
            replies.append(Reply(token, error=refused[0].error if refused else None))
        else:
            replies += self.sparse.pull(rank, desc.key, desc.step, pulled, token, desc.part)
        self._deliver(replies)

    def handle_set_optimizer(self, peer, msg, rank):
        from .. import optim   # the registry is the only way a wire name becomes code
        optimizer = optim.from_spec(msg.body.get("optimizer"))   # validates the spec
        self.sparse.set_optimizer(optimizer)     # refuses one that cannot update sparse keys
        self.budget.set_optimizer(optimizer)
        self.shard.set_optimizer(optimizer)
        logger.info("optimizer set: %s", msg.body["optimizer"]["name"])
        self.send_raw(peer, codec.encode(Command.OK, msg.id, self.name))

    def handle_save_checkpoint(self, peer, msg, rank):
        self.checkpoint_task = checkpoint_tasks.start_save(self.shard, msg.body, self.config.server_rank,
                                                           (peer, msg.id))

    def handle_load_checkpoint(self, peer, msg, rank):
        self.checkpoint_task = checkpoint_tasks.start_load(self.shard, msg.body, (peer, msg.id))

    def handle_stats(self, peer, msg, rank):
        body = dict(self.shard.stats(), bytes_in_wire=self.bytes_in_wire, **process_usage(),
                    **self.security_counters(), budget_bytes=self.budget.limit)
        held, steps = self.sparse.stats()
        body["held_bytes"] += held
        body["steps"].update(steps)
        self.send_raw(peer, codec.encode(Command.OK, msg.id, self.name, body=body))

    # -- replies ------------------------------------------------------------------------
    def _expect(self, peer, msg, n):
        token = (peer, msg.id)
        if token in self.pending:
            raise ProtocolError(f"request id {msg.id} is already in flight from this peer")
        if n == 0:
            self.send_raw(peer, codec.encode(Command.OK, msg.id, self.name))
            return token
        priority = msg.body.get("priority", 0) if isinstance(msg.body, dict) else 0
        self.pending[token] = _Pending(msg.cmd, n, priority if type(priority) is int else 0)
        return token

    def _deliver(self, replies):
        """Count ``replies`` against their requests; answer every request now complete, the
        highest priority first (one step's completion can release many workers' requests)."""
        pending, complete = self.pending, []
        for r in replies:
            p = pending.get(r.token)
            if p is None:
                continue
            p.remaining -= 1
            if r.error is not None and p.error is None:
                p.error = r.error
            if r.arrays:
                p.arrays += r.arrays
            if p.remaining == 0:
                del self.pending[r.token]
                complete.append((r.token, p))
        if len(complete) > 1:
            complete.sort(key=lambda c: -c[1].priority)
        for (peer, msg_id), p in complete:
            if p.error is not None:
                self.failed(peer, msg_id, p.error)
            else:
                self._reply_arrays(peer, msg_id, p.arrays)

    def _reply_arrays(self, peer, msg_id, arrays):
        """An array that is a whole received frame (a step's sum is built in rank 0's push)
        goes as that frame: zmq's own reference, nothing to track, and the shard writes to a
        copy of it from then on. Any other array goes zero-copy and tracked."""
        descs, bufs, tracked = [d for d, _ in arrays], [], []
        for _, a in arrays:
            frame = sockets.received_frame(a)
            if frame is not None:
                self.guard.share(a)
                bufs.append(frame)
            else:
                bufs.append(a.reshape(-1).view(np.uint8))
                tracked.append(a)
        frames = codec.encode(Command.OK, msg_id, self.name, descs, bufs)
        tracker = self.send_raw(peer, frames, track=bool(tracked))
        for a in tracked:
            self.guard.add(a, tracker)


def process_usage():
    """``cpu_s`` (user + system seconds), ``pid``, and ``rss_bytes`` and ``peak_rss_bytes``
    where Linux /proc tells them, of this process."""
    t = os.times()
    out = {"cpu_s": t.user + t.system, "pid": os.getpid()}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name = "rss_bytes" if line.startswith("VmRSS") else "peak_rss_bytes"
                    out[name] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out
