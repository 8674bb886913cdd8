"""``python -m psframe_launcher`` is ``psframe-launch``."""
import sys

from .cli import main

sys.exit(main())
