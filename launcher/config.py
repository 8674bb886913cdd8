"""``LaunchConfig``: everything one ``psframe-launch`` invocation asked for, validated."""
import dataclasses
import os
import re
import sys

from psframe import config as envc
from psframe.errors import ConfigError

from .backends import REGISTRY

BACKENDS = tuple(REGISTRY)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """One job to launch. ``num_servers`` None means one per host; ``backend`` None means
    auto-detect (``ssh`` with a hostfile, ``slurm`` inside an allocation, else ``local``)."""
    num_workers: int
    script: str
    script_args: tuple = ()
    num_servers: int = None
    backend: str = None
    hostfile: str = None
    env: tuple = ()                     # (("KEY", "VALUE"), ...) from --env, in order
    kvstore: str = "dist_sync"
    start_timeout: float = envc.DEFAULTS[envc.START_TIMEOUT]
    optimizer_modules: tuple = ()       # absolute file paths or dotted module names
    ssh_port: int = None
    ssh_identity: str = None
    ssh_options: tuple = ()             # extra '-o KEY=VALUE' for ssh
    log_dir: str = None
    host_tier: bool = True              # False: PSFRAME_HIERARCHICAL=0 for every process
    python: str = sys.executable
    cwd: str = dataclasses.field(default_factory=os.getcwd)
    shutdown_grace: float = 3.0         # after the workers end, how long scheduler/servers get
    kill_grace: float = 3.0             # SIGTERM -> SIGKILL when stopping the job
    security: str = None                # curve | token | none; None: curve multi-host, else token
    max_restarts: int = 0               # restart a failed job up to this many times

    def __post_init__(self):
        if self.num_workers < 1:
            raise ConfigError(f"-n {self.num_workers}: a job needs at least 1 worker (-n N, N >= 1)")
        if self.num_servers is not None and self.num_servers < 1:
            raise ConfigError(f"-s {self.num_servers}: a job needs at least 1 server (-s N, N >= 1)")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"--launcher {self.backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        if self.kvstore not in envc.KINDS or self.kvstore == "local":
            raise ConfigError(f"--kvstore {self.kvstore!r}: use one of "
                              f"{', '.join(k for k in envc.KINDS if k != 'local')}")
        if self.security is not None and self.security not in envc.SECURITY_MODES:
            raise ConfigError(f"--security {self.security!r}: use one of {', '.join(envc.SECURITY_MODES)}")
        if self.max_restarts < 0:
            raise ConfigError(f"--max-restarts {self.max_restarts}: must be >= 0")
        if not self.start_timeout > 0:
            raise ConfigError(f"--start-timeout {self.start_timeout}: must be > 0 seconds")
        if self.hostfile is not None and not os.access(self.hostfile, os.R_OK):
            raise ConfigError(f"-H {self.hostfile!r}: the hostfile does not exist or is not readable")
        for key, _ in self.env:
            if not _ENV_NAME.match(key):
                raise ConfigError(f"--env {key!r}: not a valid variable name; use --env KEY=VALUE")
        if not self.script:
            raise ConfigError("no script given: psframe-launch -n N script.py [args...]")


def parse_env_pairs(items, environ=None):
    """Turn ``["A=1", "B=x=y", "C"]`` into ``(("A", "1"), ("B", "x=y"), ("C", <C here>))``.
    A bare ``KEY`` takes its value from the launcher's environment, so a secret never has to
    appear in any argv (not even the launcher's).

    Raises:
        ConfigError: an invalid name, or a bare ``KEY`` that is not set here.
    """
    environ = os.environ if environ is None else environ
    pairs = []
    for item in items or ():
        key, eq, value = item.partition("=")
        if not _ENV_NAME.match(key):
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE or KEY with KEY a variable name")
        if not eq:
            if key not in environ:
                raise ConfigError(f"--env {key}: {key} is not set in the launcher's environment; "
                                  f"export it, or pass --env {key}=VALUE")
            value = environ[key]
        pairs.append((key, value))
    return tuple(pairs)


def resolve_modules(items, cwd):
    """Optimizer modules as the servers should import them: files become absolute paths,
    dotted names stay as they are.

    Raises:
        ConfigError: a path that looks like a file does not exist.
    """
    out = []
    for item in items or ():
        if item.endswith(".py") or os.sep in item:
            path = os.path.abspath(os.path.join(cwd, item))
            if not os.path.isfile(path):
                raise ConfigError(f"--optimizer-module {item!r}: no such file ({path}); pass a "
                                  f"Python file or an importable module name")
            out.append(path)
        elif re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", item):
            out.append(item)
        else:
            raise ConfigError(f"--optimizer-module {item!r}: not a file path or a module name")
    return tuple(out)
