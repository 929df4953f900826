"""``python -m livetx`` is the ``livetx`` command."""

import sys

from livetx.cli import main

sys.exit(main())
