"""The Updater's column-wise replay against the sequential oracle (no database)."""

from __future__ import annotations

import random

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.shared.config import DatabaseCfg
from dx.shared.formats.csv import ROW
from dx.shared.validate import validate
from dx.workers.imports.updater import replay
from tests.updater_reference import COLUMNS, FIELDS, apply_sequentially, random_records

DB = DatabaseCfg.model_validate({"id": "contacts", "tenant": "t", "primary_key": "email", "fields": FIELDS})


def _run(table: dict, records: list[list[str]], upsert: bool) -> tuple[dict, list[tuple[int, str]]]:
    """Validate and replay ``records``, then apply the resulting actions to a copy of ``table``."""
    chunk = pl.DataFrame([[i + 1 for i in range(len(records))], *zip(*records, strict=True)],
                         schema={ROW: pl.Int64, **{c: pl.String for c in COLUMNS}}, orient="col")
    v = validate(chunk, DB, COLUMNS, dedupe=None, operation_column="operation")
    initial = v.good.filter(pl.col("email").is_in(list(table)))[ROW]
    out = replay(v.good, "email", initial, upsert)
    after = {k: dict(r) for k, r in table.items()}
    for r in out.filter(pl.col("gone") | pl.col("action").is_in(["replace"])).iter_rows(named=True):
        del after[r["email"]]
    for r in out.filter(pl.col("action").is_not_null()).iter_rows(named=True):
        values = {"first_name": r["first_name"], "points": r["points"]}
        if r["action"] == "update":
            after[r["email"]].update(values)
        else:
            after[r["email"]] = {**values, "birth_date": None}
    refused = out.filter(pl.col("code").is_not_null()).select(ROW, "code").rows()
    failures = sorted([*v.failed.select("row_number", "error_code").rows(), *refused])
    return after, failures


def test_insert_update_delete_of_one_key_ends_deleted():
    # Given: I, U, D of one key, and U of a key that was never there
    records = [["I", "a@x.it", "A", "1"], ["U", "a@x.it", "B", "2"], ["D", "a@x.it", "", ""],
               ["U", "z@x.it", "Z", "9"]]
    # When: replayed on an empty table
    table, failures = _run({}, records, upsert=False)
    # Then: the key is gone, and only the update of the missing key failed
    assert table == {}
    assert failures == [(4, "KEY_NOT_FOUND")]


def test_delete_then_insert_replaces_the_record_and_forgets_absent_fields():
    # Given: a key with a birth date the source does not carry
    before = {"a@x.it": {"first_name": "Old", "points": 1, "birth_date": "1990-01-01"}}
    # When: it is deleted, inserted again, then updated; and another key is only updated
    table, failures = _run(before | {"b@x.it": {"first_name": "B", "points": 2, "birth_date": "1980-01-01"}},
                           [["D", "a@x.it", "", ""], ["I", "a@x.it", "New", "5"], ["U", "A@x.it", "Newer", ""],
                            ["U", "b@x.it", "B2", "3"]], upsert=False)
    # Then: the re-inserted record has no birth date; the updated one keeps its own
    assert table == {"a@x.it": {"first_name": "Newer", "points": None, "birth_date": None},
                     "b@x.it": {"first_name": "B2", "points": 3, "birth_date": "1980-01-01"}}
    assert failures == []


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), n_records=st.integers(1, 300), n_keys=st.integers(1, 40),
       n_initial=st.integers(0, 40), upsert=st.booleans())
def test_replay_matches_the_sequential_oracle(seed, n_records, n_keys, n_initial, upsert):
    # Given: random records over a few keys, some of them in the table already
    rng = random.Random(seed)
    records = random_records(rng, n_records, n_keys, bad_ratio=0.1)
    before = {f"k{k}@x.it": {"first_name": "Init", "points": k, "birth_date": "2000-01-01"}
              for k in rng.sample(range(n_keys), min(n_initial, n_keys))}
    # When: replayed column-wise, and applied one by one
    table, failures = _run(before, records, upsert)
    expected = apply_sequentially(before, records, upsert=upsert)
    # Then: the same table and the same failed operations
    assert table == expected.table
    assert failures == sorted(expected.failures)
