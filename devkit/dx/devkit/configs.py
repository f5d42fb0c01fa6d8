"""YAML configurations written by programs (the demo, the tests, the bench) as a person writes them."""

from __future__ import annotations

from typing import Any

import yaml


class _Plain(yaml.SafeDumper):
    """Writes a value shared by two places twice: `dx apply` refuses aliases (*name)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(doc: dict[str, Any], *, sort_keys: bool = False) -> str:
    """The document as YAML for `dx apply`, keys in the order given (or sorted)."""
    return yaml.dump(doc, Dumper=_Plain, sort_keys=sort_keys, allow_unicode=True)
