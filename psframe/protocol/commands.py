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
    # replies
    OK = "ok"                        # success; may carry arrays (pull) or a body
    ERROR = "error"                  # body: {"name": whitelisted error name, "message": str}


COMMANDS = {c.value: c for c in Command}
