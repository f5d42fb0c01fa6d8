"""``python -m dx``: the same as the ``dx`` command."""

from dx.cli import entry

entry()
