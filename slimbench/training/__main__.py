"""``torchrun --nproc_per_node N -m slimbench.training ...``: the ``slimbench train`` command under torchrun."""

import sys

from slimbench.cli.train import main

sys.exit(main())
