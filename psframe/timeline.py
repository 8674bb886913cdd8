"""Per-process Chrome traces for ``PSFRAME_TIMELINE=file.json``: each key's push, pull and
pushpull on the workers and each step's merge on the servers, viewable in chrome://tracing or
https://ui.perfetto.dev.

Every process writes its own file next to the one named (``file.worker-0.json``,
``file.server-1.json``); timestamps are wall-clock microseconds, so the files line up, and
``python -m psframe.timeline file.json`` merges them into ``file.json``.
"""
import glob
import json
import logging
import os
import sys
import threading
import time

from .config import ROLES

logger = logging.getLogger(__name__)

PIDS = {r.name: r.trace_pid for r in sorted(ROLES.values(), key=lambda r: r.trace_pid)}
MAX_EVENTS = 2_000_000      # a runaway job must not eat the host's memory


def key_name(key):
    """How a key is shown in a trace (a fusion group's wire key without its reserved "\\x00")."""
    return key[1:] if type(key) is str and key.startswith("\x00") else key


def now_us():
    return time.time() * 1e6


def process_path(path, role, rank):
    stem, ext = os.path.splitext(path)
    return f"{stem}.{role}-{rank}{ext or '.json'}"


class Timeline:
    """Trace events of one process, written as Chrome JSON by ``save``."""

    def __init__(self, path, role, rank):
        self.path = process_path(path, role, rank)
        self.pid = PIDS.get(role, 3000) + rank
        self._lock = threading.Lock()
        self.events = [{"name": "process_name", "ph": "M", "pid": self.pid,
                        "args": {"name": f"{role} {rank}"}}]
        self.dropped = 0

    def complete(self, name, cat, start_us, end_us, tid=0, args=None):
        """One finished span ("X" event) from ``start_us`` to ``end_us``."""
        if len(self.events) >= MAX_EVENTS:
            self.dropped += 1
            return
        ev = {"name": name, "cat": cat, "ph": "X", "ts": start_us, "dur": max(0.0, end_us - start_us),
              "pid": self.pid, "tid": tid}
        if args:
            ev["args"] = args
        with self._lock:
            self.events.append(ev)

    def name_thread(self, tid, name):
        self.events.append({"name": "thread_name", "ph": "M", "pid": self.pid, "tid": tid,
                            "args": {"name": name}})

    def save(self):
        """Write the trace file (atomically: a partial file never appears)."""
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"traceEvents": self.events, "displayTimeUnit": "ms"}, f)
        os.replace(tmp, self.path)
        if self.dropped:
            logger.warning("timeline: %d events over the limit of %d were dropped", self.dropped, MAX_EVENTS)
        logger.info("timeline written to %s (%d events)", self.path, len(self.events))


def for_process(config, role, rank):
    """The Timeline of this process when ``config.timeline`` names a file, else None."""
    if not config.timeline:
        return None
    return Timeline(config.timeline, role, rank)


def merge(path):
    """Merge every per-process file of ``path`` into ``path``; returns the number of events."""
    stem, ext = os.path.splitext(path)
    events = []
    for role in PIDS:
        for part in sorted(glob.glob(f"{glob.escape(stem)}.{role}-[0-9]*{ext or '.json'}")):
            with open(part) as f:
                events.extend(json.load(f)["traceEvents"])
    with open(path, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    return len(events)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m psframe.timeline FILE.json  (merges FILE.<role>-<rank>.json)",
              file=sys.stderr)
        return 2
    n = merge(argv[0])
    print(f"{argv[0]}: {n} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
