"""``python -m aioloader``: the command line (see :mod:`aioloader.cli`)."""

import sys

from aioloader.cli import main

sys.exit(main())
