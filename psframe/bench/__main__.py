"""``python -m psframe.bench``."""
import sys

from . import main

sys.exit(main())
