"""Process-wide logging set-up: one prefix naming the role and rank, configured at start."""
import logging
import sys

from .errors import PSError


def setup(role, rank=None, host="", level="INFO"):
    """Configure the root logger once for a psframe process.

    On a terminal each line names the process (``[server 1@host]``); under psframe-launch
    (output piped) the launcher's own prefix already does, so the line starts with the time.
    """
    who = role if rank is None else f"{role} {rank}"
    if host:
        who += f"@{host}"
    prefix = f"[{who}] " if sys.stderr.isatty() else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def run_role(role, rank, host, level, service):
    """A role's process: logging set up once, then the exit status of ``service()`` (which
    builds and runs the role, so start-up errors are caught too). A PSError ends
    the process with one line naming the cause: a traceback would bury it in the job report."""
    setup(role, rank, host, level)
    try:
        return service()
    except PSError as exc:
        logging.getLogger(f"psframe.{role}").error("%s: %s", type(exc).__name__, exc)
        return 1


def count(n, noun):
    """``n`` and ``noun``, plural unless n is 1: ``count(1, "server")`` is "1 server"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
