"""``python -m psframe.server``: the launcher starts each server this way."""
import sys

from .. import config, logs
from .heap import keep_freed_memory
from .service import ServerService


def main():
    cfg = config.from_env()
    keep_freed_memory()
    return logs.run_role("server", cfg.server_rank, cfg.host, cfg.log_level,
                         lambda: ServerService(cfg).run())


if __name__ == "__main__":
    sys.exit(main())
