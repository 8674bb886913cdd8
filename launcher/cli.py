"""``psframe-launch``: argparse -> ``LaunchConfig`` -> ``launch``. One spelling per flag."""
import argparse
import logging
import os
import sys

from psframe import config as envc
from psframe.errors import ConfigError

from .config import BACKENDS, LaunchConfig, parse_env_pairs, resolve_modules


def build_parser():
    p = argparse.ArgumentParser(
        prog="psframe-launch",
        description="Run a psframe job: 1 scheduler, S servers and N workers running SCRIPT.",
        epilog="Every process gets PSFRAME_ROLE, PSFRAME_SCHEDULER, PSFRAME_NUM_WORKERS, "
               "PSFRAME_NUM_SERVERS, PSFRAME_KVSTORE, PSFRAME_RANK (workers), "
               "PSFRAME_SERVER_RANK (servers), PSFRAME_LOCAL_RANK, PSFRAME_LOCAL_SIZE, "
               "PSFRAME_HOST, PSFRAME_START_TIMEOUT, PSFRAME_RESTART (restarts), plus --env.")
    p.add_argument("-n", dest="num_workers", type=int, required=True, metavar="NUM_WORKERS",
                   help="number of workers")
    p.add_argument("-s", dest="num_servers", type=int, default=None, metavar="NUM_SERVERS",
                   help="number of servers (default: one per host)")
    p.add_argument("--launcher", dest="backend", choices=BACKENDS, default=None,
                   help="how to start processes (default: ssh with -H, slurm inside an "
                        "allocation, else local)")
    p.add_argument("-H", dest="hostfile", metavar="HOSTFILE",
                   help="hosts, one per line: 'host' or 'host slots=N' (# comments)")
    p.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="extra environment variable for every process (repeatable); a bare KEY "
                        "passes the launcher's own value, keeping secrets out of every argv")
    p.add_argument("--kvstore", default="dist_sync", metavar="KIND",
                   help="dist_sync (default), dist_async or dist_device_sync")
    p.add_argument("--start-timeout", type=float, default=envc.DEFAULTS[envc.START_TIMEOUT],
                   metavar="SECONDS", help="seconds every process has to register with the scheduler; "
                        "after that the job fails naming who is missing (default: %(default)s)")
    p.add_argument("--security", choices=envc.SECURITY_MODES, default=None,
                   help="how every connection authenticates: curve (encrypted; the default with "
                        "several hosts), token (a per-process job token, not encrypted; the default "
                        "on one host), or none (anyone who can reach a port is trusted)")
    p.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="when a process dies, stop the job (as always), then start it again, up "
                        "to K times, with PSFRAME_RESTART=1, 2, ... (scripts resume from their "
                        "latest checkpoint)")
    p.add_argument("--optimizer-module", action="append", default=[], metavar="PATH_OR_MODULE",
                   help="file or module defining custom optimizers; the servers import it "
                        "(repeatable)")
    p.add_argument("--host-tier", dest="host_tier", action="store_const", const=True, default=None,
                   help="workers on one host push through the host's aggregator, which sums their "
                        "gradients and talks to the servers once per host (the default: sets "
                        "PSFRAME_HIERARCHICAL=1, see docs/architecture.md)")
    p.add_argument("--no-host-tier", dest="host_tier", action="store_const", const=False,
                   help="every worker pushes to the servers on its own (PSFRAME_HIERARCHICAL=0)")
    p.add_argument("--ssh-port", type=int, default=None, help="ssh port (default: ssh's own)")
    p.add_argument("--ssh-identity", default=None, metavar="FILE", help="ssh private key")
    p.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra ssh -o option, e.g. StrictHostKeyChecking=no (repeatable)")
    p.add_argument("--log-dir", default=None, metavar="DIR",
                   help="also write each process's output to DIR/<role>-<rank>-at-<host>.log")
    p.add_argument("-v", "--verbose", action="store_true", help="log the launcher's decisions")
    p.add_argument("script", help="the worker script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script")
    return p


def config_from_args(ns):
    """Build and validate the ``LaunchConfig`` of parsed arguments.

    Raises:
        ConfigError: a flag is out of range or malformed.
    """
    cwd = os.getcwd()
    return LaunchConfig(
        num_workers=ns.num_workers, num_servers=ns.num_servers, backend=ns.backend,
        hostfile=ns.hostfile, env=parse_env_pairs(ns.env), kvstore=ns.kvstore,
        start_timeout=ns.start_timeout, security=ns.security, max_restarts=ns.max_restarts,
        optimizer_modules=resolve_modules(ns.optimizer_module, cwd),
        ssh_port=ns.ssh_port, ssh_options=tuple(ns.ssh_option), ssh_identity=ns.ssh_identity and os.path.abspath(ns.ssh_identity),
        log_dir=ns.log_dir and os.path.abspath(ns.log_dir), host_tier=ns.host_tier,
        script=ns.script, script_args=tuple(ns.args), cwd=cwd)


def main(argv=None):
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING,
                        format="psframe-launch: %(levelname)s: %(message)s")
    from .supervisor import launch
    try:
        return launch(config_from_args(ns))
    except ConfigError as exc:
        print(f"psframe-launch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
