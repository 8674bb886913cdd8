"""``python -m psframe.server``: the launcher starts each server this way."""
import sys

from .. import config, logs
from .service import ServerService


def main():
    cfg = config.from_env()
    return logs.run_role("server", cfg.server_rank, cfg.host, cfg.log_level,
                         lambda: ServerService(cfg).run())


if __name__ == "__main__":
    sys.exit(main())
