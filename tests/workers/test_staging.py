"""The staging store's chunk files: written batch by batch by the plan, read whole by a chunk."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from dx.shared.formats.csv import ROW
from dx.workers import staging

SCHEMA = {ROW: pl.Int64(), "email": pl.String()}


pytestmark = pytest.mark.usefixtures("staging_dir")


def batch(rows: range) -> pl.DataFrame:
    return pl.DataFrame({ROW: list(rows), "email": [f"u{i}@example.com" if i % 3 else None for i in rows]},
                        schema=SCHEMA)


def test_a_chunk_reads_back_every_batch_written_to_it_in_order():
    # Given three batches split over two chunks (the second goes to chunk 0 only, with an empty piece after it)
    with staging.ChunkFiles(7) as files:
        files.write(0, batch(range(1, 4)).to_arrow())
        files.write(1, batch(range(4, 6)).to_arrow())
        files.write(0, batch(range(6, 9)).to_arrow())
        files.write(0, batch(range(9, 9)).to_arrow())
        files.write(1, batch(range(9, 12)).to_arrow())
    # When each chunk is read / Then it holds its batches in the order written, nulls kept
    assert staging.read_chunk(7, 0, SCHEMA).equals(pl.concat([batch(range(1, 4)), batch(range(6, 9))]))
    assert staging.read_chunk(7, 1, SCHEMA).equals(pl.concat([batch(range(4, 6)), batch(range(9, 12))]))
    # And a chunk that got no record reads as empty, with the columns it would have had
    empty = staging.read_chunk(7, 2, SCHEMA)
    assert empty.is_empty() and empty.schema == pl.Schema(SCHEMA)


def test_a_plan_that_fails_midway_leaves_no_chunk_file_to_read_and_a_retry_starts_afresh():
    # Given a plan that wrote to a chunk, then failed
    with pytest.raises(RuntimeError), staging.ChunkFiles(8) as files:
        files.write(0, batch(range(1, 4)).to_arrow())
        raise RuntimeError("the source broke off")
    # Then the chunk has no file under its name: it reads as empty, never half-written
    assert staging.read_chunk(8, 0, SCHEMA).is_empty()
    # When the retried plan clears the chunks and writes them again / Then only the new records are there
    staging.remove_chunks(8)
    assert not staging.chunk_file(8, 0).parent.exists()
    with staging.ChunkFiles(8) as files:
        files.write(0, batch(range(1, 3)).to_arrow())
    assert staging.read_chunk(8, 0, SCHEMA).equals(batch(range(1, 3)))


def test_split_gives_each_chunk_its_records_in_source_order_each_once():
    # Given a batch of 1,000 records in two pieces (as the CSV reader's blocks), with chunk numbers out of order
    table = pa.concat_tables([batch(range(1, 400)).to_arrow(), batch(range(400, 1001)).to_arrow()])
    chunk_nos = np.array([(i * 7919) % 5 for i in range(1, 1001)], dtype=np.int64)
    chunk_nos[chunk_nos == 3] = 4  # chunk 3 gets nothing
    # When it is split over 5 chunks
    pieces = dict(staging.split(table, chunk_nos, 5))
    # Then every chunk that has records gets exactly its own, in source order, nulls kept; none is empty
    assert sorted(pieces) == [0, 1, 2, 4]
    for chunk_no, piece in pieces.items():
        expected = [i for i in range(1, 1001) if chunk_nos[i - 1] == chunk_no]
        assert piece[ROW].to_pylist() == expected
        assert piece["email"].to_pylist() == [f"u{i}@example.com" if i % 3 else None for i in expected]


def test_a_chunk_closed_early_is_read_whole_while_others_are_still_written():
    # Given a streaming plan's writer: chunk 0 closed (and sent) while chunk 1 is still being written
    with staging.ChunkFiles(8) as files:
        files.write(0, batch(range(1, 4)).to_arrow())
        files.close(0)
        files.write(1, batch(range(4, 6)).to_arrow())
        # Then chunk 0 is there under its name, whole, and chunk 1 is not yet
        assert staging.read_chunk(8, 0, SCHEMA).equals(batch(range(1, 4)))
        assert not staging.chunk_file(8, 1).exists()
    assert staging.read_chunk(8, 1, SCHEMA).equals(batch(range(4, 6)))


def records(n: int, seed: int, long_from: int | None = None) -> pa.Table:
    """``n`` records with notes of random length (some null), longer from record ``long_from`` on."""
    rng = np.random.default_rng(seed)
    notes = ["x" * int(rng.integers(0, 300)) * (8 if long_from is not None and i >= long_from else 1)
             if rng.random() > 0.1 else None for i in range(n)]
    return pa.table({ROW: pa.array(range(1, n + 1), pa.int64()), "email": [f"u{i}@example.com" for i in range(n)],
                     "notes": notes})


def chunks(pieces: list[tuple[int, pa.Table, bool]]) -> dict[int, list[int]]:
    """The row numbers of each chunk, checking that each chunk's pieces come together and end once."""
    rows: dict[int, list[int]] = {}
    ended = []
    for chunk_no, piece, ends in pieces:
        assert chunk_no not in ended and (not rows or chunk_no in rows or chunk_no == max(rows) + 1)
        rows.setdefault(chunk_no, []).extend(piece.column(ROW).to_pylist())
        if ends:
            ended.append(chunk_no)
    assert ended == sorted(rows)
    return rows


def test_the_same_records_make_the_same_chunks_however_they_come_in_tables():
    # Given 3000 records, whole and in tables of random sizes
    table = records(3000, seed=1)
    rng = np.random.default_rng(2)
    bounds = sorted({0, 3000, *rng.integers(1, 3000, 40).tolist()})
    tables = [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]

    # When each is cut at 20 kB a chunk
    whole = chunks(list(staging.cut([table], 20_000)))
    pieces = chunks(list(staging.cut(tables, 20_000)))

    # Then the chunks are the same, every record in one, in order
    assert whole == pieces
    assert [r for rows in whole.values() for r in rows] == list(range(1, 3001))
    assert len(whole) > 10


def test_a_chunk_holds_about_chunk_bytes_however_large_its_records():
    # Given records eight times larger in the second half than in the first
    table = records(4000, seed=3, long_from=2000)
    sizes = dict(zip(table.column(ROW).to_pylist(), staging.record_sizes(table).tolist(), strict=True))

    # When cut at 40 kB a chunk
    cut = chunks(list(staging.cut([table], 40_000)))

    # Then each chunk but the last reaches its size with its last record and not before (the first two
    # at a quarter of it), and those of the larger records hold fewer of them
    for chunk_no, rows in list(cut.items())[:-1]:
        limit = 40_000 if chunk_no > 1 else 10_000
        total = sum(sizes[r] for r in rows)
        assert total >= limit > total - sizes[rows[-1]]
    assert max(len(rows) for rows in list(cut.values())[-4:-1]) * 3 < min(len(rows) for rows in list(cut.values())[2:5])
