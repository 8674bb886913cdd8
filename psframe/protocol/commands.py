"""The wire vocabulary: protocol version and the one ``Command`` enum every role dispatches on."""
import enum

PROTOCOL_VERSION = 1


class Command(str, enum.Enum):
    """Every message's ``cmd``. Handlers are named ``handle_<value>``."""
    # node <-> scheduler
    REGISTER = "register"            # node announces role/rank/address; reply: address book
    HEARTBEAT = "heartbeat"          # liveness, both directions
    PLACE = "place"                  # worker asks where keys live; reply: placements
    BARRIER = "barrier"              # reply once every worker arrived
    DONE = "done"                    # worker finished cleanly
    JOIN = "join"                    # worker ran out of data; reply once every worker joined
    LEFT = "left"                    # scheduler -> server: a worker pushes no more (body: rank,
                                     # joined: its missing pushes count as zero)
    SHUTDOWN = "shutdown"            # scheduler -> node: stop, job finished
    ABORT = "abort"                  # scheduler -> node: stop, job failed (body: reason)
    # worker <-> server
    INIT = "init"
    PUSH = "push"
    PULL = "pull"
    PUSHPULL = "pushpull"
    SET_OPTIMIZER = "set_optimizer"
    STATS = "stats"                  # counters of a server (for tests and the bench)
    SAVE_CHECKPOINT = "save_checkpoint"  # write this server's shard (body: url); reply: its index
    LOAD_CHECKPOINT = "load_checkpoint"  # replace values/state/steps from a checkpoint (body: url)
    # replies
    OK = "ok"                        # success; may carry arrays (pull) or a body
    ERROR = "error"                  # body: {"name": whitelisted error name, "message": str}


# Who may send each command: the role of the connection's authenticated identity must be listed
# (one entry per command; a command without one fails here, at import).
SENDERS = {
    Command.REGISTER: ("worker", "server"),
    Command.HEARTBEAT: ("worker", "server", "scheduler"),
    Command.PLACE: ("worker",),
    Command.BARRIER: ("worker",),
    Command.DONE: ("worker",),
    Command.JOIN: ("worker",),
    Command.LEFT: ("scheduler",),
    Command.SHUTDOWN: ("scheduler",),
    Command.ABORT: ("worker", "server", "scheduler"),
    Command.INIT: ("worker",),
    Command.PUSH: ("worker",),
    Command.PULL: ("worker",),
    Command.PUSHPULL: ("worker",),
    Command.SET_OPTIMIZER: ("worker",),
    Command.STATS: ("worker",),
    Command.SAVE_CHECKPOINT: ("worker",),
    Command.LOAD_CHECKPOINT: ("worker",),
    Command.OK: ("scheduler", "server"),
    Command.ERROR: ("scheduler", "server"),
}
_missing = [c.value for c in Command if c not in SENDERS]
if _missing:
    raise RuntimeError(f"commands without an entry in SENDERS (who may send them): {_missing}")

COMMANDS = {c.value: c for c in Command}
