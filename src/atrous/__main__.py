"""``python -m atrous`` (also what ``torchrun -m atrous`` runs)."""

import sys

from .cli import main

sys.exit(main())
