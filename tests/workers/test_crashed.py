"""What a run whose stage failed for good is told: a full staging disk has its own code."""

from __future__ import annotations

import pytest

from dx.shared.errors import ErrorCode
from dx.workers.crashed import _code_of


@pytest.mark.parametrize("last_line", [
    "OSError: [Errno 28] No space left on device",
    "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device",
    "OSError: [Errno 122] Disk quota exceeded: '/staging/runs/7/chunks/3.arrow'",
])
def test_a_full_disk_or_quota_is_staging_full(last_line):
    # Given the last line of a stage's traceback / Then the run's code
    assert _code_of(last_line) is ErrorCode.STAGING_FULL


@pytest.mark.parametrize("last_line", ["", "OSError: [Errno 13] Permission denied",
                                       "psycopg.errors.DiskFull: could not extend file"])
def test_anything_else_is_an_internal_error(last_line):
    # Given another last line (the database's full disk is not the staging's) / Then INTERNAL_ERROR
    assert _code_of(last_line) is ErrorCode.INTERNAL_ERROR
