"""Per-host counters of a server: who sent how much, and how many pushes per key-part-step.

They prove what the host tier saves: with it, each host sends one push per key-part and step.
"""


class HostTraffic:
    """What a server received per sending host: messages and bytes (``count_message``), and
    pushes per key-part and step (the newest ``KEEP_STEPS`` steps of each key-part)."""
    KEEP_STEPS = 8

    def __init__(self):
        self.hosts = {}         # host name -> {"messages": n, "bytes": n, "pushes": n}
        self.steps = {}         # (key, part) -> {step: {host name: pushes}}

    def count_message(self, host, nbytes):
        h = self.hosts.get(host)
        if h is None:
            h = self.hosts[host] = {"messages": 0, "bytes": 0, "pushes": 0}
        h["messages"] += 1
        h["bytes"] += nbytes

    def count_push(self, host, desc, workers):
        h = self.hosts.get(host)
        if h is None:
            h = self.hosts[host] = {"messages": 0, "bytes": 0, "pushes": 0}
        h["pushes"] += 1
        per_step = self.steps.get((desc.key, desc.part))
        if per_step is None:
            per_step = self.steps[(desc.key, desc.part)] = {}
        by_host = per_step.get(desc.step)
        if by_host is None:
            by_host = per_step[desc.step] = {}
            if len(per_step) > self.KEEP_STEPS:
                del per_step[min(per_step)]
        by_host[host] = by_host.get(host, 0) + 1

    def by_host(self):
        return {h: dict(c) for h, c in self.hosts.items()}

    def key_steps(self):
        """``{repr((key, part)): {step: {host: pushes}}}`` (str keys: the stats travel as msgpack)."""
        return {repr(k): {str(s): dict(h) for s, h in per_step.items()} for k, per_step in self.steps.items()}
