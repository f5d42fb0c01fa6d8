"""Factories shared by the fast unit tests of ``dx.shared`` (no PostgreSQL, no broker).

The factories are session-scoped because they are stateless: Hypothesis tests
may use them without the function-scoped-fixture health check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from dx.shared.config import DatabaseCfg, SourceCfg
from dx.shared.errors import ErrorCode, RunError


@pytest.fixture(scope="session")
def make_source() -> Callable[..., SourceCfg]:
    """A valid CSV source; keyword arguments override its settings."""

    def make(**overrides: Any) -> SourceCfg:
        return SourceCfg(**{"connection": "files", "path": "in/contacts.csv", **overrides})

    return make


@pytest.fixture(scope="session")
def make_database() -> Callable[..., DatabaseCfg]:
    """A database of tenant ``acme``; ``fields`` uses the YAML shorthand (name -> type or dict)."""

    def make(fields: dict[str, Any], primary_key: str = "id") -> DatabaseCfg:
        return DatabaseCfg(id="contacts", tenant="acme", primary_key=primary_key, fields=fields)

    return make


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[..., Path]:
    """Write text (in ``encoding``) or bytes to ``tmp_path / name``, creating folders."""

    def write(name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
        return path

    return write


@pytest.fixture(scope="session")
def raises_run_error() -> Callable[[ErrorCode], AbstractContextManager[pytest.ExceptionInfo[RunError]]]:
    """``with raises_run_error(ErrorCode.X) as info:`` — a RunError carrying exactly that code."""

    @contextmanager
    def expect(code: ErrorCode) -> Iterator[pytest.ExceptionInfo[RunError]]:
        with pytest.raises(RunError) as info:
            yield info
        assert info.value.code is code, f"expected {code.value}, got {info.value}"

    return expect
