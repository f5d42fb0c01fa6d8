"""Keys applied by several of an overwrite's streamed chunks: found from the chunks' keys files."""

from __future__ import annotations

import polars as pl
import pytest

from dx.shared.formats.csv import ROW
from dx.shared.validate import KEY
from dx.workers import staging
from dx.workers.imports.duplicates import CHUNK, repeated_keys

pytestmark = pytest.mark.usefixtures("staging_dir")


def _applied(run_id: int, chunks: list[list[tuple[int, str]]]) -> dict:
    """Keys files of ``chunks`` ((row, key) each applied); the run as the reduce sees it."""
    for n, rows in enumerate(chunks):
        staging.chunk_file(run_id, n).parent.mkdir(parents=True, exist_ok=True)
        staging.write_keys(run_id, n, pl.DataFrame(rows, schema={ROW: pl.Int64, KEY: pl.String}, orient="row"))
    return {"id": run_id, "n_chunks": len(chunks)}


def test_keys_each_applied_by_one_chunk_are_no_repeat():
    run = _applied(1, [[(1, "a"), (2, "b")], [], [(3, "c"), (5, "ab")]])
    assert repeated_keys(run, 4) is None
    assert repeated_keys({"id": 2, "n_chunks": 0}, 0) is None


def test_a_key_applied_by_two_chunks_comes_back_with_each_application():
    run = _applied(3, [[(1, "a"), (2, "b")], [(4, "c")], [(7, "a"), (9, "d")]])
    repeated = repeated_keys(run, 5)
    assert repeated is not None
    assert repeated.sort(ROW).select(ROW, KEY, CHUNK).rows() == [(1, "a", 0), (7, "a", 2)]


def test_keys_files_that_disagree_with_the_chunks_counts_stop_the_reduce():
    # a keys file lost or left over would hide a repeat: the reduce fails (and is retried) instead
    run = _applied(4, [[(1, "a"), (2, "b")], [(4, "c")]])
    with pytest.raises(RuntimeError, match="hold 3 keys, its chunks applied 4"):
        repeated_keys(run, 4)
    with pytest.raises(RuntimeError, match="more keys than its chunks applied"):
        repeated_keys(run, 2)
