"""``python -m psframe.scheduler``: the launcher starts the job's scheduler this way."""
import sys

from .. import config, logs
from .service import SchedulerService


def main():
    cfg = config.from_env()
    return logs.run_role("scheduler", None, cfg.host, cfg.log_level,
                         lambda: SchedulerService(cfg).run())


if __name__ == "__main__":
    sys.exit(main())
