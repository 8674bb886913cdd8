"""``python -m psframe.server``: the launcher starts each server this way."""
import logging
import sys

from .. import config as config_mod, logs
from ..errors import PSError
from .service import ServerService


def main():
    cfg = config_mod.from_env()
    logs.setup("server", cfg.server_rank, cfg.host, level=cfg.log_level)
    try:
        return ServerService(cfg).run()
    except PSError as exc:   # one line naming the cause beats a traceback in the job report
        logging.getLogger("psframe.server").error("%s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
