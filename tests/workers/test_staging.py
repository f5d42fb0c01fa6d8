"""The staging store's chunk files: written batch by batch by the plan, read whole by a chunk."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pytest

from dx.shared.formats.csv import ROW
from dx.shared.settings import get_settings
from dx.workers import staging

SCHEMA = {ROW: pl.Int64(), "email": pl.String()}


@pytest.fixture(autouse=True)
def staging_dir(tmp_path, monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("DX_STAGING_DIR", str(tmp_path / "staging"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def batch(rows: range) -> pl.DataFrame:
    return pl.DataFrame({ROW: list(rows), "email": [f"u{i}@example.com" if i % 3 else None for i in rows]},
                        schema=SCHEMA)


def test_a_chunk_reads_back_every_batch_written_to_it_in_order():
    # Given three batches split over two chunks (the second goes to chunk 0 only, with an empty piece after it)
    with staging.ChunkFiles(7) as files:
        files.write(0, batch(range(1, 4)))
        files.write(1, batch(range(4, 6)))
        files.write(0, batch(range(6, 9)))
        files.write(0, batch(range(9, 9)))
        files.write(1, batch(range(9, 12)))
    # When each chunk is read / Then it holds its batches in the order written, nulls kept
    assert staging.read_chunk(7, 0, SCHEMA).equals(pl.concat([batch(range(1, 4)), batch(range(6, 9))]))
    assert staging.read_chunk(7, 1, SCHEMA).equals(pl.concat([batch(range(4, 6)), batch(range(9, 12))]))
    # And a chunk that got no record reads as empty, with the columns it would have had
    empty = staging.read_chunk(7, 2, SCHEMA)
    assert empty.is_empty() and empty.schema == pl.Schema(SCHEMA)


def test_a_plan_that_fails_midway_leaves_no_chunk_file_to_read_and_a_retry_starts_afresh():
    # Given a plan that wrote to a chunk, then failed
    with pytest.raises(RuntimeError), staging.ChunkFiles(8) as files:
        files.write(0, batch(range(1, 4)))
        raise RuntimeError("the source broke off")
    # Then the chunk has no file under its name: it reads as empty, never half-written
    assert staging.read_chunk(8, 0, SCHEMA).is_empty()
    # When the retried plan clears the chunks and writes them again / Then only the new records are there
    staging.remove_chunks(8)
    assert not staging.chunk_file(8, 0).parent.exists()
    with staging.ChunkFiles(8) as files:
        files.write(0, batch(range(1, 3)))
    assert staging.read_chunk(8, 0, SCHEMA).equals(batch(range(1, 3)))
