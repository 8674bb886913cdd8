"""The host's aggregator: a thread of local rank 0 that sums the host's pushes in shared memory
and talks to the servers once per key-part for the whole host.

Why a thread of local rank 0 and not a process of its own: it starts wherever a worker starts,
so every launcher backend (local, ssh, mpi, slurm, or a job started by hand) gets it with no
new process to place, supervise or name; if it dies its process dies, and the launcher already
names that process (``worker <rank>@host``) as the one that failed. Its sums are numpy calls and
its sends zmq calls, which run without the interpreter lock, so the training thread beside it
loses little.

Per key it keeps one slot per local rank and one result slot (``host_segments``). Sync: step i of a
key is ready once every local rank pushed it; the slots are summed in local-rank order into the
first slot (the same additions a server makes for one host's pushes, so flat and tiered runs
agree bit for bit) and sent as one push marked ``summed``. Async: whatever local pushes are
waiting are summed and sent as one push (the server applies it on arrival); a key's next push
waits for the previous one's ack, so pushes that arrive meanwhile travel together. A pull is
sent once for the host into the result slot, which is rewritten only when no worker is still
copying out of it.
"""
import logging
import threading

import zmq

from ..aggregation import reduce, shm
from ..errors import ConfigError, PeerLostError, PSError, UnevenStepsError, to_wire
from ..transport import sockets
from .host_notes import Note, Upstream, pack, unpack
from .host_segments import HostSegments
from .host_uplink import HostUplink

logger = logging.getLogger(__name__)


class HostAggregator(threading.Thread):
    def __init__(self, store, where):
        super().__init__(name="psframe-host-aggregator", daemon=True)
        self.store, self.size = store, store.local_size
        self.sync = store.sync
        self.failure = None
        self._stop_evt = threading.Event()
        self._ctx = sockets.new_context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        try:
            self._router.bind(where)
        except zmq.ZMQError as exc:
            self._ctx.destroy(linger=0)
            raise ConfigError(f"host tier: cannot listen at {where} ({exc}); set "
                              f"PSFRAME_HIERARCHICAL=0 to run without the tier") from None
        self.up = HostUplink(store)
        self._entries = {}
        self._segments = HostSegments(shm.job_prefix(store.config.scheduler), self.size, self._entries)
        self._workers = set()       # ids of the local workers seen
        self._byes = 0
        self._joined = set()        # local ranks in kv.join(): their turn in a sum is zero
        self._finished = set()      # local ranks that closed
        self._upstream = []
        self._flushes = []          # [note, upstream batches it waits for]

    # -- life -----------------------------------------------------------------------------
    def stop(self):
        self._stop_evt.set()

    def raise_failure(self):
        if self.failure is not None:
            raise self.failure

    def run(self):
        try:
            self._loop()
        except BaseException as exc:       # the workers of this host hear it from their calls
            if not isinstance(exc, PSError):    # a bug: its traceback is what to report
                logger.exception("host aggregator failed")
            elif not isinstance(exc, PeerLostError):     # the job's end is told by the main thread
                logger.error("host aggregator failed: %s: %s", type(exc).__name__, exc)
            self.failure = exc if isinstance(exc, PSError) else PSError(
                f"the host aggregator failed: {type(exc).__name__}: {exc}")
            for who in self._workers:
                self._reply(who, {"id": 0, "error": to_wire(self.failure)})
        finally:
            self._segments.unlink_all()
            self._router.close(0)
            self.up.close()
            self._ctx.term()

    def _loop(self):
        up = self.up
        poller = sockets.Poller([self._router, *up.sockets()])
        while not self._stop_evt.is_set():
            if self._byes >= self.size and not self._upstream:
                return
            up.check()
            waiting_send = any(not u.sent for u in self._upstream)
            for sock in poller.poll(0.001 if waiting_send else 0.1):
                if sock is self._router:
                    while sockets.readable(self._router):
                        who, frame = self._router.recv_multipart()
                        self._handle(who, unpack(frame))
                else:
                    up.customer.receive_ready(sock)
            self._progress_upstream()

    # -- notes from the workers -------------------------------------------------------------
    def _handle(self, who, msg):
        self._workers.add(who)
        op, mid = msg.get("op"), msg.get("id", 0)
        try:
            if op in ("push", "pushpull", "pull"):
                self._take(who, mid, op, msg)
            elif op == "release":
                for k in msg["keys"]:
                    self._entries[k].readers -= 1
                self._pull_what_is_due()
            elif op == "init":
                for to, reply in self._segments.init(who, mid, msg["keys"]):
                    self._reply(to, reply)
            elif op == "attached":
                self._segments.attached(msg["index"])
            elif op == "flush":
                self._flushes.append([Note(who, mid, "flush", ()), list(self._upstream)])
            elif op == "forget":      # the values pulled so far are old (TierLink.forget_values)
                for e in self._entries.values():
                    e.value_step = -1
                self._reply(who, {"id": mid})
            elif op == "join":
                self._joined.add(int(who))
                self._reply(who, {"id": mid})
                self._push_ready([e.key for e in self._entries.values() if self._ready(e)])
                self._pull_what_is_due()
            elif op == "bye":
                self._byes += 1
                self._finished.add(int(who))
                self._fail_uneven(list(self._entries.values()))
            else:
                raise ConfigError(f"host tier: unknown note {op!r}")
        except PSError as exc:
            self._reply(who, {"id": mid, "error": to_wire(exc)})

    def _take(self, who, mid, op, msg):
        keys = msg["keys"]
        note = Note(who, mid, op, keys)
        rank = int(who)
        if op != "push":
            for k, step in zip(keys, msg["steps"]):
                e = self._entries[k]
                e.waiters.append([note, step, e.pull_seq])
        if op != "pull":
            for k in keys:
                self._entries[k].waiting[rank] = note
            self._fail_uneven([self._entries[k] for k in keys])
            self._push_ready([k for k in keys if self._ready(self._entries[k])])
        self._pull_what_is_due()

    def _ready(self, e):
        pushed = any(n is not None for n in e.waiting)
        if self.sync:      # every local rank but the joined ones
            return pushed and all(n is not None for r, n in enumerate(e.waiting) if r not in self._joined)
        return e.pushing == 0 and pushed

    def _fail_uneven(self, entries):
        """Sync: a step some local rank pushed that a closed local rank never will cannot
        complete; its pushers hear why now (as the servers say it for flat pushes)."""
        if not self.sync or not self._finished:
            return
        first = self.store.rank - self.store.local_rank
        for e in entries:
            gone = [r for r in self._finished - self._joined if e.waiting[r] is None]
            if not gone or all(n is None for n in e.waiting):
                continue
            done = self.up.pushes_sent(e.key)      # all of them: it flushed before it closed
            error = UnevenStepsError.worker_finished(done + 1, e.key, first + gone[0], done)
            for r, n in enumerate(e.waiting):
                if n is not None:
                    e.waiting[r] = None
                    self._fail(n, error)

    # -- to the servers -------------------------------------------------------------------
    def _push_ready(self, keys):
        """Sum each key's waiting slots in local-rank order and send the sums as one batch
        (a pushpull when every local worker asked for the value back and nobody reads it).
        A key that travels on its own is summed message by message right before each message
        goes (``reduce.SumOnSend``), so summing overlaps sending; a fused key is summed first."""
        if not keys:
            return
        values, owners, entries, summed_later, freed = [], [], [], {}, []
        both = True
        for k in keys:
            e = self._entries[k]
            ranks = [r for r, n in enumerate(e.waiting) if n is not None]
            slots = [e.slots[r] for r in ranks]
            if len(slots) > 1 and self.up.keys[k].group is None:
                summed_later[k] = slots
                values.append(slots[0])
            else:
                values.append(reduce.sum_in_order(slots))
            notes = [e.waiting[r] for r in ranks]
            e.waiting = [None] * self.size
            both = both and self.sync and all(n.op == "pushpull" for n in notes) and e.readers == 0 \
                and not e.pulling
            freed += [(n, k) for n in notes[1:]]
            owners.append(notes[0])        # the first slot holds the sum until it is sent
            entries.append(e)
            e.pushing += 1
        up = self.up
        prepare = reduce.SumOnSend(summed_later) if summed_later else None
        if both:
            for e in entries:
                e.pulling = True
                e.pull_seq += 1
            reqs, finish = up.pushpull(keys, values, [[e.result] for e in entries], prepare)
        else:
            reqs, finish = up.push(keys, values, prepare), []
        for n, k in freed:
            self._consumed(n, k)        # summed (every message is built): their slots are free
        steps = [up.pushes_sent(k) for k in keys]

        def sent():
            for k, n in zip(keys, owners):
                self._consumed(n, k)

        def done(error):
            for e in entries:
                e.pushing -= 1
            if both:
                self._pulled(entries, steps, finish, error)
            elif error is not None:
                self._broadcast(error)
            if not self.sync:     # pushes held while this one was in flight go now
                self._push_ready([e.key for e in entries if self._ready(e)])
            self._pull_what_is_due()   # pulls held behind those pushes go after them
        self._upstream.append(Upstream(reqs, sent, done))

    def _pulled(self, entries, steps, finish, error):
        """A pull of ``entries`` (at ``steps``) answered: land the values, serve the waiters."""
        if error is None:
            for f in finish:
                f()
        for e, step in zip(entries, steps):
            e.pulling = False
            if error is None:
                e.value_step, e.value_seq = step, e.pull_seq
        self._serve(entries, error)

    def _pull_what_is_due(self):
        """Serve waiters the result slots can satisfy; send one pull batch for the keys whose
        waiters need a newer value and whose result slot is free."""
        wanted = [e for e in self._entries.values() if e.waiters]
        self._serve(wanted, None)
        due = []
        for e in wanted:
            if not e.waiters or e.pulling or e.readers or any(n is not None for n in e.waiting):
                continue
            pushes = self.up.pushes_sent(e.key)
            if self.sync and not any(w[1] <= pushes and not self._fresh(e, w) for w in e.waiters):
                continue
            due.append(e)
        if not due:
            return
        keys = [e.key for e in due]
        steps = [self.up.pushes_sent(k) for k in keys]
        for e in due:
            e.pulling = True
            e.pull_seq += 1
        reqs, finish = self.up.pull(keys, [[e.result] for e in due])

        def done(error):
            self._pulled(due, steps, finish, error)
            self._pull_what_is_due()
        self._upstream.append(Upstream(reqs, None, done))

    def _fresh(self, e, waiter):
        """Whether the result slot can answer ``waiter``: it holds the step the worker asked
        for (sync), or comes from a pull sent after the worker's note (async)."""
        if self.sync:
            return e.value_step >= waiter[1]
        return e.value_seq > waiter[2]

    def _serve(self, entries, error):
        for e in entries:
            if e.pulling:
                continue
            still = []
            for w in e.waiters:
                note = w[0]
                if error is not None and not self._fresh(e, w):
                    self._fail(note, error)
                elif self._fresh(e, w):
                    if not note.done:
                        e.readers += 1
                        note.unserved.discard(e.key)
                        self._maybe_reply(note)
                else:
                    still.append(w)
            e.waiters = still

    def _progress_upstream(self):
        for u in list(self._upstream):
            if not u.sent and all(r.done or r.tracker is None or r.tracker.done for r in u.reqs):
                u.sent = True
                if u.on_sent is not None:
                    u.on_sent()
            if u.sent and all(r.done for r in u.reqs):
                self._upstream.remove(u)
                error = next((r.error for r in u.reqs if r.error is not None), None)
                u.on_done(error)
        errors = self.up.take_errors()
        if errors:
            self._broadcast(errors[0])
        for f in list(self._flushes):
            if all(u not in self._upstream for u in f[1]):
                self._flushes.remove(f)
                self._reply(f[0].who, {"id": f[0].id})

    # -- replies ---------------------------------------------------------------------------
    def _consumed(self, note, key):
        note.unconsumed.discard(key)
        self._maybe_reply(note)

    def _maybe_reply(self, note):
        if not note.done and not note.unconsumed and not note.unserved:
            note.done = True
            self._reply(note.who, {"id": note.id})

    def _fail(self, note, error):
        """Answer ``note`` with ``error``; the values already handed to it are taken back."""
        if not note.done:
            note.done = True
            if note.op != "push":
                for k in note.keys:
                    if k not in note.unserved:
                        self._entries[k].readers -= 1
            self._reply(note.who, {"id": note.id, "error": to_wire(error)})

    def _broadcast(self, error):
        for who in self._workers:
            self._reply(who, {"id": 0, "error": to_wire(error)})

    def _reply(self, who, msg):
        self._router.send_multipart([who, pack(msg)])
