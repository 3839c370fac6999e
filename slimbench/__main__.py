"""``python -m slimbench``: the ``slimbench`` command."""

import sys

from slimbench.cli import main

sys.exit(main())
