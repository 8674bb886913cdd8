"""Which host each worker is on (its init says), and what a server received from each host.

The host of a worker decides its turn in a step's sum: each host's pushes are summed first, in
local-rank order, then the host sums in host order (``shard``). The counters prove what the host
tier saves: through it, each host sends one push per key-part and step.
"""
from ..errors import ProtocolError

KEEP_STEPS = 8     # pushes per key-part and step are kept for this many newest steps


class Hosts:
    def __init__(self, num_workers):
        self.num_workers = num_workers
        self.of_rank = {}       # rank -> (first rank of its host, workers on the host, host name)
        self.tiered = set()     # first ranks of hosts whose workers push through the host tier
        self.traffic = {}       # host name -> {"messages": n, "bytes": n, "pushes": n}
        self.steps = {}         # (key, part) -> {step: {host name: pushes}}

    def set(self, rank, first, count, name, tiered=False):
        """Workers ``first..first+count-1`` share host ``name``, ``rank`` among them (``tiered``:
        their pushes come as host sums).

        Raises:
            ProtocolError: ``rank`` is not in that range, or the range passes the job's workers.
        """
        if not (0 <= first <= rank < first + count <= self.num_workers):
            raise ProtocolError(f"worker {rank} says its host holds workers {first}..{first + count - 1}"
                                f" of {self.num_workers}: ranks must be contiguous per host")
        self.of_rank[rank] = (first, count, str(name))
        if tiered:
            self.tiered.add(first)

    def covered(self, rank, absent):
        """Whether ``rank``'s pushes come inside its host's sums while it is away: its host is
        tiered and some worker of it has not left (``absent``: ranks that left)."""
        first, count, _ = self.of(rank)
        return first in self.tiered and any(q not in absent for q in range(first, first + count))

    def of(self, rank):
        """``(first, count, name)`` of ``rank``'s host; unknown: one host of every worker."""
        return self.of_rank.get(rank) or (0, self.num_workers, "")

    def _counters(self, host):
        c = self.traffic.get(host)
        if c is None:
            c = self.traffic[host] = {"messages": 0, "bytes": 0, "pushes": 0}
        return c

    def count_message(self, rank, nbytes):
        c = self._counters(self.of(rank)[2])
        c["messages"] += 1
        c["bytes"] += nbytes

    def count_push(self, host, desc):
        self._counters(host)["pushes"] += 1
        per_step = self.steps.get((desc.key, desc.part))
        if per_step is None:
            per_step = self.steps[(desc.key, desc.part)] = {}
        by_host = per_step.get(desc.step)
        if by_host is None:
            by_host = per_step[desc.step] = {}
            if len(per_step) > KEEP_STEPS:
                del per_step[min(per_step)]
        by_host[host] = by_host.get(host, 0) + 1

    def stats(self):
        """``hosts``: counters per host; ``key_steps``: ``{repr((key, part)): {step: {host:
        pushes}}}`` (str keys: the stats travel as msgpack)."""
        return {"hosts": {h: dict(c) for h, c in self.traffic.items()},
                "key_steps": {repr(k): {str(s): dict(h) for s, h in per_step.items()}
                              for k, per_step in self.steps.items()}}
