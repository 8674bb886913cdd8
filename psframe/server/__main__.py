"""``python -m psframe.server``: the launcher starts each server this way."""
import sys

from .. import config as config_mod, logs
from .service import ServerService


def main():
    cfg = config_mod.from_env()
    logs.setup("server", cfg.server_rank, cfg.host)
    return ServerService(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
