"""The Updater's column-wise replay (and merge of writes that leave fields unset) against the
sequential oracle (no database)."""

from __future__ import annotations

import random

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.shared.config import DatabaseCfg
from dx.shared.formats.csv import ROW
from dx.shared.validate import sets_column, validate
from dx.workers.imports.importer import fields_of
from dx.workers.imports.updater import ACTION, merged_writes, replay, sets_required
from tests.updater_reference import COLUMNS, FIELDS, Unset, apply_sequentially, random_records

DB = DatabaseCfg.model_validate({"id": "contacts", "tenant": "t", "primary_key": "email", "fields": FIELDS})


def _run(table: dict, records: list[list[str | None]], upsert: bool,
         unset: Unset = None) -> tuple[dict, list[tuple[int, str]]]:
    """Validate and replay ``records``, then apply the resulting actions to a copy of ``table`` as the
    MERGE does (an update sets only the fields its key's writes set)."""
    chunk = pl.DataFrame([[i + 1 for i in range(len(records))], *zip(*records, strict=True)],
                         schema={ROW: pl.Int64, **{c: pl.String for c in COLUMNS}}, orient="col")
    v = validate(chunk, DB, COLUMNS, dedupe=None, operation_column="operation", unset=unset)
    initial = v.good.filter(pl.col("email").is_in(list(table)))[ROW]
    out = replay(v.good, "email", initial, upsert, sets_required(DB, v.good))
    fields = fields_of(v.good)
    unset_fields = [f for f in fields if sets_column(f) in v.good.columns]
    writes = merged_writes(out, fields, unset_fields).rename({ACTION: "action"}) if unset_fields \
        else out.filter(pl.col("action").is_not_null())
    after = {k: dict(r) for k, r in table.items()}
    for r in out.filter(pl.col("gone") | pl.col("action").is_in(["replace"])).iter_rows(named=True):
        del after[r["email"]]
    for r in writes.iter_rows(named=True):
        values = {"first_name": r["first_name"], "points": r["points"]}
        if r["action"] == "update":
            values = {f: v for f, v in values.items() if r.get(sets_column(f), True)}
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


def test_a_field_left_out_is_kept_by_an_update_and_empty_after_an_insert():
    # Given: a with points and a birth date; b absent
    before = {"a@x.it": {"first_name": "A", "points": 1, "birth_date": "1990-01-01"}}
    # When: a is updated twice, setting points only, then first_name only; b is inserted without
    # points, then updated with an explicit empty (None: left out, "": empty)
    table, failures = _run(before, [["U", "a@x.it", None, "5"], ["U", "a@x.it", "A2", None],
                                    ["I", "b@x.it", "B", None], ["U", "b@x.it", None, ""]],
                           upsert=False, unset="absent")
    # Then: a keeps what no record set and takes what each set; b's points are empty
    assert table == {"a@x.it": {"first_name": "A2", "points": 5, "birth_date": "1990-01-01"},
                     "b@x.it": {"first_name": "B", "points": None, "birth_date": None}}
    assert failures == []


def test_an_upserting_update_without_a_required_field_inserts_nothing():
    # Given: an empty table
    # When: a U leaves first_name out on a missing key (under update_missing: insert), then one sets it
    table, failures = _run({}, [["U", "a@x.it", None, "1"], ["U", "a@x.it", "A", None],
                                ["U", "a@x.it", None, "7"]], upsert=True, unset="absent")
    # Then: the first fails; the second inserts (points empty), the third updates points only
    assert table == {"a@x.it": {"first_name": "A", "points": 7, "birth_date": None}}
    assert failures == [(1, "REQUIRED_FIELD_MISSING")]


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), n_records=st.integers(1, 300), n_keys=st.integers(1, 40),
       n_initial=st.integers(0, 40), upsert=st.booleans(), unset=st.sampled_from(["absent", "empty"]))
def test_replay_of_records_leaving_fields_unset_matches_the_oracle(seed, n_records, n_keys, n_initial, upsert,
                                                                    unset):
    # Given: random records over a few keys, about a fifth of their fields left out and as many empty,
    # some keys in the table already
    rng = random.Random(seed)
    records = random_records(rng, n_records, n_keys, bad_ratio=0.1, left_out=0.2)
    before = {f"k{k}@x.it": {"first_name": "Init", "points": k, "birth_date": "2000-01-01"}
              for k in rng.sample(range(n_keys), min(n_initial, n_keys))}
    # When: replayed and merged column-wise, and applied one by one setting each record's set fields only
    table, failures = _run(before, records, upsert, unset)
    expected = apply_sequentially(before, records, upsert=upsert, unset=unset)
    # Then: the same table and the same failed operations
    assert table == expected.table
    assert failures == sorted(expected.failures)
