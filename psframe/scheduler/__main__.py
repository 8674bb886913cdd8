"""``python -m psframe.scheduler``: the launcher starts the job's scheduler this way."""
import logging
import sys

from .. import config as config_mod, logs
from ..errors import PSError
from .service import SchedulerService


def main():
    cfg = config_mod.from_env()
    logs.setup("scheduler", host=cfg.host, level=cfg.log_level)
    try:
        return SchedulerService(cfg).run()
    except PSError as exc:   # one line naming the cause beats a traceback in the job report
        logging.getLogger("psframe.scheduler").error("%s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
