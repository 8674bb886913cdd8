"""Pure state of the scheduler: who registered, who is alive, barriers, placements, shutdown.

Every method takes the event (and the time, passed in) and returns a list of ``Send`` to make.
``peer`` is the routing id of the socket a message came from; a node's *name* is
``"worker:3"`` / ``"server:1"``. Broadcasts go to the peer a node heartbeats from.
"""
import dataclasses

from ..config import ROLES
from ..logs import count
from ..sharding import PlacementState
from .stalls import StallWatch

REGISTERING = [r for r in ROLES.values() if r.registers]


@dataclasses.dataclass
class Send:
    peer: bytes
    cmd: str                      # a Command value
    id: int = 0
    body: dict = None


@dataclasses.dataclass
class _Node:
    name: str
    role: str
    rank: int
    host: str
    address: str = ""
    local_address: str = ""       # a server's unix socket for workers on its machine, if any
    peer: bytes = b""             # where broadcasts go (last heartbeat's peer)
    control: bytes = b""          # the peer it registered from (a worker's request socket)
    last_seen: float = 0.0
    done: bool = False
    calls: dict = None            # a worker's call record, from its last heartbeat
    joined: bool = False          # a worker in (or past) kv.join(): it pushes no more


class MembershipState:
    """Registration -> address book -> barriers/placements -> done/shutdown, with deadlines."""

    def __init__(self, num_workers, num_servers, bigarray_bound, start_timeout, heartbeat_timeout, now,
                 stall_timeout=30.0, stall_action="abort"):
        self.num_workers, self.num_servers = num_workers, num_servers
        sizes = {"num_workers": num_workers, "num_servers": num_servers}
        self.counts = {r.name: sizes[r.count] for r in REGISTERING}   # role -> how many
        self.start_timeout, self.heartbeat_timeout = start_timeout, heartbeat_timeout
        self.started_at = now
        self.nodes = {}                   # name -> _Node
        self.waiting_register = []        # (peer, id) until everyone is in
        self.ready = False
        self.barrier = {}                 # rank -> (peer, id); a retry replaces its entry
        self.barrier_notes = {}           # str(rank) -> note for everyone at release
        self.barrier_agree = {}           # rank -> {"what", "value"} every worker must agree on
        self.placements = PlacementState(num_servers, bigarray_bound)
        self.parked_places = []           # (peer, id, keys, rank) of non-zero ranks
        self.finished = False             # every worker done: shut down
        self.failure = None               # reason the job was aborted
        self.failure_reported = False     # ... by the failing node itself (not detected here)
        self.blamed = None                # (role, rank): the node the failure is put on
        self.stalls = StallWatch(stall_timeout, stall_action)
        self.warnings = []                # stall reports to log (not failures)
        self.joins = []                   # (peer, id) of workers in kv.join()

    # -- registration -------------------------------------------------------------------
    def register(self, peer, msg_id, role, rank, host, address, now, local_address=""):
        name = f"{role}:{rank}"
        if role not in self.counts:
            return [Send(peer, "error", msg_id, {"name": "ConfigError", "message":
                    f"{role!r} is not a role that registers; one of {', '.join(self.counts)}"})]
        limit = self.counts[role]
        if not 0 <= rank < limit:
            return [Send(peer, "error", msg_id, {"name": "ConfigError", "message":
                    f"{role} rank {rank} is outside 0..{limit - 1} of this job"})]
        if name in self.nodes:
            return [Send(peer, "error", msg_id, {"name": "ConfigError", "message":
                    f"{name} registered twice (second from {host}): every process needs its own "
                    f"PSFRAME_RANK/PSFRAME_SERVER_RANK"})]
        self.nodes[name] = _Node(name, role, rank, host, address, local_address, peer=peer, control=peer,
                                 last_seen=now)
        self.waiting_register.append((peer, msg_id))
        if len(self.nodes) < sum(self.counts.values()):
            return []
        self.ready = True
        for node in self.nodes.values():   # nobody could heartbeat while waiting for the book
            node.last_seen = now
        book = self.address_book()
        sends = [Send(p, "ok", i, book) for p, i in self.waiting_register]
        self.waiting_register = []
        return sends

    def address_book(self):
        """Every listed role's addresses by rank, and how many of each role the job has."""
        book = {}
        for r in REGISTERING:
            nodes = [self.nodes[f"{r.name}:{i}"] for i in range(self.counts[r.name])]
            if r.listed_as:
                book[r.listed_as] = [n.address for n in nodes]
                book[f"{r.listed_as}_local"] = [n.local_address for n in nodes]
            book[r.count] = self.counts[r.name]
        return book

    def missing(self):
        """``{role: [ranks that have not registered]}``."""
        return {role: [i for i in range(n) if f"{role}:{i}" not in self.nodes]
                for role, n in self.counts.items()}

    # -- liveness -----------------------------------------------------------------------
    def heartbeat(self, peer, name, now, calls=None):
        node = self.nodes.get(name)
        if node is None:
            return []
        node.peer, node.last_seen = peer, now
        if calls is not None:
            node.calls = calls
        return [Send(peer, "heartbeat")]

    def tick(self, now):
        """Deadlines: start-up and heartbeats. Returns the abort broadcast, if any."""
        if self.failure or self.finished:
            return []
        if not self.ready and now - self.started_at > self.start_timeout:
            absent = " and ".join(f"{len(ranks)} of {count(self.counts[role], role)} (ranks {ranks})"
                                  for role, ranks in self.missing().items())
            return self.abort(
                f"start-up timed out after {self.start_timeout:g}s: {absent} never registered; "
                f"check that they were started and can reach the scheduler, or raise "
                f"PSFRAME_START_TIMEOUT")
        if self.ready:
            for node in self.nodes.values():
                if not node.done and now - node.last_seen > self.heartbeat_timeout:
                    self.blamed = (node.role, node.rank)
                    return self.abort(
                        f"{node.role} {node.rank}@{node.host} stopped responding: no heartbeat "
                        f"for {now - node.last_seen:.1f}s (PSFRAME_HEARTBEAT_TIMEOUT="
                        f"{self.heartbeat_timeout:g}); it died or hung")
            return self._check_stalls()
        return []

    def _check_stalls(self):
        workers = [n for n in self.nodes.values() if n.role == "worker"]
        records = {n.rank: n.calls or {} for n in workers if not n.done and not n.joined}
        stall, abort = self.stalls.check(records, [n.rank for n in workers if n.done])
        if stall is None:
            return []
        if not abort:
            self.warnings.append(stall.report)
            return []
        if stall.blamed is not None:
            self.blamed = ("worker", stall.blamed)
        return self.abort(stall.report)

    def abort(self, reason):
        """Fail the job: everyone still attached is told why."""
        self.failure = reason
        sends = [Send(p, "abort", i, {"reason": reason}) for p, i in self.waiting_register]
        sends += [Send(p, "abort", i, {"reason": reason}) for p, i in self.barrier.values()]
        sends += [Send(p, "abort", i, {"reason": reason}) for p, i, _, _ in self.parked_places]
        # to both of a node's sockets: its heartbeat socket may not have spoken yet
        sends += [Send(p, "abort", 0, {"reason": reason}) for n in self.nodes.values()
                  if not n.done for p in {n.peer, n.control}]
        self.waiting_register, self.barrier, self.parked_places = [], {}, []
        return sends

    def fail(self, name, reason):
        """A node reports its own failure (e.g. an uncaught exception in a worker)."""
        node = self.nodes.get(name)
        where = f"{name.replace(':', ' ')}@{node.host}" if node else name
        if node is not None:
            node.done = True     # it knows why; telling it back would only race its traceback
        sends = self.abort(f"{where} failed: {reason}")
        self.failure_reported = True
        return sends

    # -- collectives --------------------------------------------------------------------
    def enter_barrier(self, peer, msg_id, rank, note=None, agree=None):
        """Release every worker once all arrived (counted by rank, so a retry after a timeout
        counts once); notes attached by ranks go to everyone (e.g. rank 0's set_optimizer
        outcome). ``agree`` (``{"what": str, "value": ...}``, e.g. the gradient compression
        config): every worker must bring the same value, else each gets a ConfigError listing
        every worker's."""
        self.barrier[rank] = (peer, msg_id)
        if note is not None:
            self.barrier_notes[str(rank)] = note
        if agree is not None:
            self.barrier_agree[rank] = agree
        if len(self.barrier) < self.num_workers:
            return []
        error = self._disagreement()
        body = {"notes": self.barrier_notes} if self.barrier_notes else None
        sends = [Send(p, "error", i, error) if error else Send(p, "ok", i, body)
                 for p, i in self.barrier.values()]
        self.barrier, self.barrier_notes, self.barrier_agree = {}, {}, {}
        return sends

    def _disagreement(self):
        """The error body when the workers of a barrier brought different ``agree`` values."""
        if not self.barrier_agree:
            return None
        values = {r: (self.barrier_agree.get(r) or {}).get("value") for r in range(self.num_workers)}
        if all(v == values[0] for v in values.values()):
            return None
        what = next(a.get("what", "a setting") for a in self.barrier_agree.values())
        listed = "; ".join(f"worker {r}: {v!r}" for r, v in values.items())
        return {"name": "ConfigError", "message": f"{what} differs between workers ({listed}); "
                                                  f"call it with the same arguments on every worker"}

    def place(self, peer, msg_id, rank, keys):
        """``keys``: [[key, size, nbytes], ...], a fusion group with its member keys as a 4th
        entry. Rank 0 decides placements (deterministic: its init order; a group's members go
        with it); other ranks wait until rank 0 placed every key they ask about."""
        if rank == 0:
            servers = []
            for k in keys:
                server = self.placements.place(k[0], k[1], k[2])
                for member in k[3] if len(k) > 3 else ():
                    self.placements.placement.setdefault(member, server)
                servers.append(server)
            sends = [Send(peer, "ok", msg_id, {"servers": servers})]
            still = []
            for parked in self.parked_places:
                answer = self._placed(*parked)
                if answer is None:
                    still.append(parked)
                else:
                    sends.append(answer)
            self.parked_places = still
            return sends
        answer = self._placed(peer, msg_id, keys, rank)
        if answer is not None:
            return [answer]
        self.parked_places.append((peer, msg_id, keys, rank))
        return []

    def _placed(self, peer, msg_id, keys, rank):
        """The answer to a non-zero rank, or None while rank 0 has not placed its keys yet."""
        placement = self.placements.placement
        for k in keys:
            if k[0] not in placement and len(k) > 3 and any(m in placement for m in k[3]):
                return Send(peer, "error", msg_id, {"name": "ConfigError", "message":
                            f"worker {rank} initialised keys {k[3][:3]}... in one call, but worker 0 "
                            f"initialised them differently; initialise the same lists of keys in "
                            f"the same order on every worker"})
        if all(k[0] in placement for k in keys):
            return Send(peer, "ok", msg_id, {"servers": [placement[k[0]] for k in keys]})
        return None

    # -- shutdown -----------------------------------------------------------------------
    def join(self, peer, msg_id, name):
        """A worker ran out of data (``kv.join``): the servers count its missing pushes as zero;
        it is answered once every worker has joined or finished."""
        node = self.nodes.get(name)
        if node is None or node.role != "worker":
            return [Send(peer, "error", msg_id, {"name": "ProtocolError",
                                                 "message": f"{name} is not a worker of this job"})]
        self.joins.append((peer, msg_id))
        sends = [] if node.joined else self._left(node, joined=True)
        node.joined = True
        return sends + self._release_joins()

    def _left(self, node, joined):
        return [Send(n.peer, "left", 0, {"rank": node.rank, "joined": joined})
                for n in self.nodes.values() if n.role == "server"]

    def _release_joins(self):
        workers = [n for n in self.nodes.values() if n.role == "worker"]
        if not self.joins or not all(n.joined or n.done for n in workers):
            return []
        sends, self.joins = [Send(p, "ok", i) for p, i in self.joins], []
        return sends

    def done(self, peer, msg_id, name):
        node = self.nodes.get(name)
        sends = [Send(peer, "ok", msg_id)]
        first_time = node is not None and not node.done
        if node is not None:
            node.done = True
        finishers = [n for n in self.nodes.values() if ROLES[n.role].finishes_job]
        if (len(finishers) == sum(self.counts[r.name] for r in REGISTERING if r.finishes_job)
                and all(n.done for n in finishers)):
            self.finished = True
            return sends + [Send(n.peer, "shutdown") for n in self.nodes.values()
                            if ROLES[n.role].shut_down_by_scheduler]
        if first_time and node.role == "worker" and not node.joined:
            # its pushes are all in (it flushed first): steps still needing it fail now
            sends += self._left(node, joined=False)
        return sends + self._release_joins()
