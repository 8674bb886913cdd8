"""Streaming every process's output with a ``[worker 3@host]`` prefix (a line a progress bar
rewrote with carriage returns shows as its final state), keeping its last lines for the failure
report, writing ``--log-dir`` files, and the line framing the launch agent uses
to carry several processes' output and their start/exit events over one stream.

Agent framing (one line each, ``\\x1e`` = ASCII record separator)::

    \\x1e<index>:o\\x1e<text>      a line of output of spec <index>
    \\x1e<index>:e\\x1e<json>      an event: {"event": "start", "pid": N, "hostname": ...}
                                  or {"event": "exit", "code": N|null, "signal": N|null}
"""
import collections
import json
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

RS = "\x1e"
TAIL_LINES = 20
_print_lock = threading.Lock()


class LineSink:
    """Where one process's lines go: prefixed to our stdout, its log file, and a tail buffer."""

    def __init__(self, label, log_dir=None, stream=None, tail=TAIL_LINES):
        self.label = label
        self.tail = collections.deque(maxlen=tail)
        self.stream = stream or sys.stdout
        self.file = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            name = label.replace("@", "-at-").replace(" ", "-").replace("/", "_") + ".log"
            self.file = open(os.path.join(log_dir, name), "a", encoding="utf-8")

    def write(self, text):
        text = final_state(text.rstrip("\r\n"))
        if text is None:
            return
        self.tail.append(text)
        with _print_lock:
            try:
                self.stream.write(f"[{self.label}] {text}\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass   # our own stdout closed (a pipe reader went away): keep supervising
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()
            self.file = None


def final_state(line):
    """What a line rewritten in place with carriage returns (a progress bar) finally shows: its
    last drawing, so the prefix stays at the start of the line and log files get no half-drawn
    fragments. None when that is blank (a bar that cleared itself)."""
    if "\r" not in line:
        return line
    last = line.rsplit("\r", 1)[1]
    return last if last.strip() else None


def frame_output(index, text):
    return f"{RS}{index}:o{RS}{text}"


def frame_event(index, **event):
    return f"{RS}{index}:e{RS}{json.dumps(event)}"


def parse_frame(line):
    """``(index, kind, payload)`` of a framed line, or None for a plain line."""
    if not line.startswith(RS):
        return None
    head, sep, payload = line[1:].partition(RS)
    index, colon, kind = head.partition(":")
    if not sep or not colon or not index.isdigit() or kind not in ("o", "e"):
        return None
    if kind == "e":
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    return int(index), kind, payload


def pump(stream, on_line, name):
    """Read ``stream`` (binary) line by line in a daemon thread, calling ``on_line(str)``;
    returns the thread. Ends at EOF."""
    def run():
        try:
            for raw in iter(stream.readline, b""):
                on_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError) as exc:
            logger.debug("output of %s ended: %s", name, exc)
        finally:
            try:
                stream.close()
            except OSError:
                pass
    thread = threading.Thread(target=run, name=f"output-{name}", daemon=True)
    thread.start()
    return thread
