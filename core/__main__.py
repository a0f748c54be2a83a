"""``python -m polymodal``: the CLI, also as ``torchrun --nproc-per-node N -m polymodal train ...``."""

import sys

from .cli import main

sys.exit(main())
