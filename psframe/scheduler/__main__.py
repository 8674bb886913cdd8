"""``python -m psframe.scheduler``: the launcher starts the job's scheduler this way."""
import sys

from .. import config as config_mod, logs
from .service import SchedulerService


def main():
    cfg = config_mod.from_env()
    logs.setup("scheduler", host=cfg.host)
    return SchedulerService(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
