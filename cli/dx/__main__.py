"""``python -m dx``: the same as the ``dx`` command."""

import sys

from dx.cli import main

sys.exit(main())
