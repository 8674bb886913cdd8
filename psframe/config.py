"""The environment contract: every ``PSFRAME_*`` variable, declared once, read once.

The launcher builds these variables (``psframe_launcher.plan``); every role reads them here into a
frozen ``Config``. Nothing else in psframe reads ``os.environ`` for a ``PSFRAME_*`` name.
"""
import dataclasses
import os
import socket

from .errors import ConfigError

# --- the environment contract, every name in docs/operations.md "Environment variables" -------
# the job and this process's place in it
ROLE = "PSFRAME_ROLE"                    # scheduler | server | worker
SCHEDULER = "PSFRAME_SCHEDULER"          # tcp://host:port of the scheduler
NUM_WORKERS = "PSFRAME_NUM_WORKERS"
NUM_SERVERS = "PSFRAME_NUM_SERVERS"
KVSTORE = "PSFRAME_KVSTORE"              # local | dist_sync | dist_async | dist_device_sync
RANK = "PSFRAME_RANK"                    # worker rank, 0..num_workers-1 (launch order)
LOCAL_RANK = "PSFRAME_LOCAL_RANK"
LOCAL_SIZE = "PSFRAME_LOCAL_SIZE"
HOST = "PSFRAME_HOST"                    # this process's host name in the job
JOB_ID = "PSFRAME_JOB_ID"                # one job's tag: whatever carries it dies with the job
# tuning, timeouts and tools
SERVER_RANK = "PSFRAME_SERVER_RANK"      # server index, 0..num_servers-1 (launch order)
BIND_HOST = "PSFRAME_BIND_HOST"          # interface servers bind to (default: PSFRAME_HOST)
START_TIMEOUT = "PSFRAME_START_TIMEOUT"  # seconds for every declared process to register
TIMEOUT = "PSFRAME_TIMEOUT"              # default timeout of blocking calls, seconds
HEARTBEAT_INTERVAL = "PSFRAME_HEARTBEAT_INTERVAL"
HEARTBEAT_TIMEOUT = "PSFRAME_HEARTBEAT_TIMEOUT"
STALL_TIMEOUT = "PSFRAME_STALL_TIMEOUT"      # seconds a blocking call waits before a stall report
STALL_ACTION = "PSFRAME_STALL_ACTION"        # abort | warn: what a stall report does
BIGARRAY_BOUND = "PSFRAME_BIGARRAY_BOUND"  # elements above which a key is sliced over servers
MAX_STEPS_AHEAD = "PSFRAME_MAX_STEPS_AHEAD"  # sync pushes a worker may have unmerged per key
FUSE_KEY_BYTES = "PSFRAME_FUSE_KEY_BYTES"  # keys up to this size, initialised together, travel fused
IPC = "PSFRAME_IPC"                      # 1: big entries go to servers on this machine over a unix socket
USER_MODULES = "PSFRAME_USER_MODULES"    # os.pathsep-separated files/modules servers import
TIMELINE = "PSFRAME_TIMELINE"            # Chrome-trace file to write per-step events to
RESTART = "PSFRAME_RESTART"              # set by psframe-launch --max-restarts: 1, 2, ... on restarts
HIERARCHICAL = "PSFRAME_HIERARCHICAL"    # 0: workers on one host push on their own, not through the host tier

LOG_LEVEL = "PSFRAME_LOG_LEVEL"          # logging level name (INFO)
SECURITY = "PSFRAME_SECURITY"            # curve | token | none: how connections authenticate
CREDENTIALS = "PSFRAME_CREDENTIALS"      # this process's credentials (psframe-launch makes them)
CREDENTIALS_FILE = "PSFRAME_CREDENTIALS_FILE"  # ... or a 0600 file holding them (by hand)
MAX_MESSAGE_BYTES = "PSFRAME_MAX_MESSAGE_BYTES"  # largest frame a socket accepts (zmq MAXMSGSIZE)
SERVER_MEMORY_BYTES = "PSFRAME_SERVER_MEMORY_BYTES"  # per-server budget: values + optimizer state
SEND_TIMEOUT = "PSFRAME_SEND_TIMEOUT"    # seconds a peer may leave its replies unread

# A process that stops because *another* process failed exits with this status, so a launcher
# can tell the root cause (any other non-zero status) from the processes it took down.
EXIT_ABORTED_BY_PEER = 75


@dataclasses.dataclass(frozen=True)
class Role:
    """What one kind of process is: everything psframe and psframe-launch need to know of it."""
    name: str
    count: str = ""          # the Config field saying how many the job has ("": exactly one)
    count_env: str = ""      # ... and the variable it is read from
    rank_env: str = ""       # the variable with a process's rank, 0..count-1 ("": no ranks)
    rank_field: str = ""     # ... and the Config field it is read into
    registers: bool = True   # registers with the scheduler (and heartbeats to it)
    listed_as: str = ""      # the address book's list of their addresses (+ "<listed_as>_local")
    standalone: bool = False  # may run without a scheduler (a worker of a ``local`` store)
    finishes_job: bool = False       # the job is done once every one of them said done
    shut_down_by_scheduler: bool = False  # told to stop once the job is done
    module: str = ""         # psframe-launch runs ``python -m module`` ("": the user's script)
    placement: str = "first_host"    # first_host | round_robin (over hosts) | slots (fill them)
    trace_pid: int = 3000    # its first process id in a timeline


# Every role, in launch order. A new role is one entry here.
ROLES = {r.name: r for r in (
    Role("scheduler", registers=False, module="psframe.scheduler", trace_pid=2000),
    Role("server", count="num_servers", count_env=NUM_SERVERS, rank_env=SERVER_RANK,
         rank_field="server_rank", listed_as="servers", shut_down_by_scheduler=True,
         module="psframe.server", placement="round_robin", trace_pid=1000),
    Role("worker", count="num_workers", count_env=NUM_WORKERS, rank_env=RANK, rank_field="rank",
         standalone=True, finishes_job=True, placement="slots", trace_pid=0),
)}

# The scheduler prints this line (then the reason) when it ends a job because of another
# process (a hung one, or one a stall waits on), so the launcher names that process, not the
# scheduler that noticed, as the root cause.
BLAME_PREFIX = "psframe-scheduler blames "


def blame_line(role, rank, reason):
    """``psframe-scheduler blames worker 2: <reason>`` (one line)."""
    return f"{BLAME_PREFIX}{role} {int(rank)}: {' '.join(str(reason).split())}"


def parse_blame(line):
    """``(role, rank, reason)`` of a ``blame_line`` found in ``line``, else None."""
    at = line.find(BLAME_PREFIX)
    if at < 0:
        return None
    who, _, reason = line[at + len(BLAME_PREFIX):].partition(": ")
    role, _, rank = who.partition(" ")
    return (role, int(rank), reason) if rank.isdigit() else None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KINDS = ("local", "dist_sync", "dist_async", "dist_device_sync")
SECURITY_MODES = ("curve", "token", "none")

DEFAULTS = {
    START_TIMEOUT: 60.0,
    TIMEOUT: 300.0,
    HEARTBEAT_INTERVAL: 1.0,
    HEARTBEAT_TIMEOUT: 10.0,
    STALL_TIMEOUT: 30.0,
    BIGARRAY_BOUND: 1_000_000,
    MAX_STEPS_AHEAD: 4,
    FUSE_KEY_BYTES: 64 << 10,
    IPC: 1,
    MAX_MESSAGE_BYTES: 1 << 30,
    SEND_TIMEOUT: 60.0,
    HIERARCHICAL: 1,
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One process's view of the job, read from the environment by ``from_env``."""
    role: str = "worker"
    scheduler: str = ""
    num_workers: int = 1
    num_servers: int = 0
    kvstore: str = ""
    rank: int = 0
    server_rank: int = 0
    local_rank: int = 0
    local_size: int = 1
    host: str = ""
    bind_host: str = ""
    start_timeout: float = DEFAULTS[START_TIMEOUT]
    timeout: float = DEFAULTS[TIMEOUT]
    heartbeat_interval: float = DEFAULTS[HEARTBEAT_INTERVAL]
    heartbeat_timeout: float = DEFAULTS[HEARTBEAT_TIMEOUT]
    stall_timeout: float = DEFAULTS[STALL_TIMEOUT]
    stall_action: str = "abort"
    bigarray_bound: int = DEFAULTS[BIGARRAY_BOUND]
    max_steps_ahead: int = DEFAULTS[MAX_STEPS_AHEAD]
    fuse_key_bytes: int = DEFAULTS[FUSE_KEY_BYTES]
    ipc: bool = True
    hierarchical: bool = True
    user_modules: tuple = ()
    timeline: str = ""
    log_level: str = "INFO"
    security: str = "none"
    credentials: object = dataclasses.field(default=None, repr=False)   # credentials text
    max_message_bytes: int = DEFAULTS[MAX_MESSAGE_BYTES]
    server_memory_bytes: int = 0      # 0: the machine's physical memory
    send_timeout: float = DEFAULTS[SEND_TIMEOUT]
    restart: int = 0            # how many times psframe-launch restarted this job (0: first run)

    @property
    def launched(self):
        """True when a scheduler address was handed to us (by psframe-launch or by hand)."""
        return bool(self.scheduler)


def _get(env, name, cast, default, minimum=None):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {cast.__name__}; "
                          f"set it to a {cast.__name__} or unset it") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    return value


def from_env(env=None):
    """Read and validate the ``PSFRAME_*`` variables of ``env`` (default ``os.environ``).

    Raises:
        ConfigError: naming the missing or malformed variable and how to fix it.
    """
    env = os.environ if env is None else env
    role = env.get(ROLE, "worker")
    if role not in ROLES:
        raise ConfigError(f"{ROLE}={role!r} is not a role; use one of {', '.join(ROLES)}")
    kvstore = env.get(KVSTORE, "")
    if kvstore and kvstore not in KINDS:
        raise ConfigError(f"{KVSTORE}={kvstore!r} is not a kvstore kind; use one of {', '.join(KINDS)}")
    scheduler = env.get(SCHEDULER, "")
    num_workers = _get(env, NUM_WORKERS, int, 1, minimum=1)
    num_servers = _get(env, NUM_SERVERS, int, 1 if scheduler else 0, minimum=0)
    if scheduler and num_servers < 1:
        raise ConfigError(f"{NUM_SERVERS} must be >= 1 in a distributed job")
    if not ROLES[role].standalone and not scheduler:
        raise ConfigError(f"role {role} needs {SCHEDULER}=tcp://host:port; start it with psframe-launch")
    counts = {"num_workers": num_workers, "num_servers": num_servers}
    ranks = {}
    for r in ROLES.values():
        if not r.rank_env:
            continue
        ranks[r.rank_field] = value = _get(env, r.rank_env, int, 0, minimum=0)
        if (r.name == role or r.rank_env in env) and value >= counts[r.count]:
            raise ConfigError(f"{r.rank_env}={value} is out of range for {r.count_env}={counts[r.count]}")
        if r.name == role and scheduler and r.rank_env not in env:
            raise ConfigError(f"a {role} of a distributed job needs {r.rank_env} "
                              f"(0..{counts[r.count] - 1}); psframe-launch sets it")
    host = env.get(HOST) or socket.gethostname()
    modules = tuple(m for m in env.get(USER_MODULES, "").split(os.pathsep) if m)
    log_level = env.get(LOG_LEVEL, "INFO").upper()
    stall_action = env.get(STALL_ACTION) or "abort"
    if stall_action not in ("abort", "warn"):
        raise ConfigError(f"{STALL_ACTION}={stall_action!r}: use abort (end the job with the "
                          f"stall report) or warn (log it and keep waiting)")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"{LOG_LEVEL}={env.get(LOG_LEVEL)!r} is not a level; use one of {', '.join(LOG_LEVELS)}")
    security, credentials = _security(env)
    return Config(
        security=security, credentials=credentials,
        max_message_bytes=_get(env, MAX_MESSAGE_BYTES, int, DEFAULTS[MAX_MESSAGE_BYTES], minimum=1 << 20),
        server_memory_bytes=_get(env, SERVER_MEMORY_BYTES, int, 0, minimum=0),
        send_timeout=_get(env, SEND_TIMEOUT, float, DEFAULTS[SEND_TIMEOUT], minimum=0.1),
        role=role, scheduler=scheduler, num_workers=num_workers, num_servers=num_servers,
        kvstore=kvstore, **ranks,
        local_rank=_get(env, LOCAL_RANK, int, 0, minimum=0),
        local_size=_get(env, LOCAL_SIZE, int, 1, minimum=1),
        host=host, bind_host=env.get(BIND_HOST, ""),
        start_timeout=_get(env, START_TIMEOUT, float, DEFAULTS[START_TIMEOUT], minimum=0.1),
        timeout=_get(env, TIMEOUT, float, DEFAULTS[TIMEOUT], minimum=0.1),
        heartbeat_interval=_get(env, HEARTBEAT_INTERVAL, float, DEFAULTS[HEARTBEAT_INTERVAL], minimum=0.01),
        heartbeat_timeout=_get(env, HEARTBEAT_TIMEOUT, float, DEFAULTS[HEARTBEAT_TIMEOUT], minimum=0.1),
        stall_timeout=_get(env, STALL_TIMEOUT, float, DEFAULTS[STALL_TIMEOUT], minimum=0.1),
        stall_action=stall_action,
        bigarray_bound=_get(env, BIGARRAY_BOUND, int, DEFAULTS[BIGARRAY_BOUND], minimum=1),
        max_steps_ahead=_get(env, MAX_STEPS_AHEAD, int, DEFAULTS[MAX_STEPS_AHEAD], minimum=1),
        fuse_key_bytes=_get(env, FUSE_KEY_BYTES, int, DEFAULTS[FUSE_KEY_BYTES], minimum=0),
        ipc=bool(_get(env, IPC, int, DEFAULTS[IPC], minimum=0)),
        user_modules=modules, timeline=env.get(TIMELINE, ""),
        hierarchical=bool(_get(env, HIERARCHICAL, int, DEFAULTS[HIERARCHICAL], minimum=0)),
        log_level=log_level,
        restart=_get(env, RESTART, int, 0, minimum=0))


def _security(env):
    """``(mode, credentials text or None)``. Without ``PSFRAME_SECURITY`` a process runs with
    whatever credentials it was given (none: unauthenticated, as a by-hand job without them)."""
    text = env.get(CREDENTIALS) or None
    path = env.get(CREDENTIALS_FILE)
    if text is None and path:
        text = ("file", path)
    mode = env.get(SECURITY, "")
    if mode and mode not in SECURITY_MODES:
        raise ConfigError(f"{SECURITY}={mode!r} is not a mode; use one of {', '.join(SECURITY_MODES)}")
    if mode == "none":
        return "none", None
    if text is None:
        if mode:
            raise ConfigError(f"{SECURITY}={mode} but this process has no credentials: pass them in "
                              f"{CREDENTIALS} or a 0600 file named by {CREDENTIALS_FILE} "
                              f"(psframe-launch does this)")
        return "none", None
    return mode or "auto", text
