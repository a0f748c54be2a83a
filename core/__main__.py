"""``python -m polymodal``: the CLI, also as ``torchrun --nproc-per-node N -m polymodal train ...``."""

import sys

from ._cli import main

sys.exit(main())
