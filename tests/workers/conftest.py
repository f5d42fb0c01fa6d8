"""Fixtures of the workers' unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dx.shared.settings import get_settings


@pytest.fixture
def staging_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A staging folder of the test's own (the settings read again before and after)."""
    monkeypatch.setenv("DX_STAGING_DIR", str(tmp_path / "staging"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
