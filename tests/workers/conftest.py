"""Fixtures of the workers' unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dx.devkit.s3 import S3, running_s3
from dx.shared.settings import get_settings


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3]:
    """An S3-compatible server (moto's) on loopback, for the object-storage store."""
    with running_s3() as server:
        yield server


@pytest.fixture(params=["folder", "s3"])
def staging_dir(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A staging store of the test's own: a folder, or a prefix of a bucket on the S3 server (the settings
    read again before and after)."""
    monkeypatch.setenv("DX_STAGING_DIR", str(tmp_path / "staging"))
    if request.param == "s3":
        server: S3 = request.getfixturevalue("s3_server")
        for name, value in server.env.items():
            monkeypatch.setenv(name, value.replace("/dx?", f"/{tmp_path.name}?"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
