"""A plain sequential Updater: the oracle the real one is compared with.

It applies records one by one, in source order, with the documented rules of the Updater
written as simply as possible, over the test database of the updater tests:
``email`` (key), ``first_name`` (text, required), ``points`` (int) and
``birth_date`` (not in the source files, so U keeps it and I leaves it empty).

A record's field is a string, or None where the record leaves it out (an XML
element not there). With ``unset``, an update (a U) sets only the fields a
record sets: ``absent`` leaves out the None ones, ``empty`` the empty ones too
(``empty_on_update: keep``); an insert leaves the others empty, and an
upserting U that would insert without ``first_name`` is REQUIRED_FIELD_MISSING.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

#: The database the updater tests declare.
FIELDS: dict[str, Any] = {"email": {"type": "email", "required": True},
                          "first_name": {"type": "text", "required": True},
                          "points": "int", "birth_date": {"type": "date", "format": "%d/%m/%Y"}}
COLUMNS = ["operation", "email", "first_name", "points"]
EMAIL_RE = re.compile(r"^[^@\s]+@([^@\s.]+\.)+[^@\s.]+$")
NOT_COUNTER = {"I": "not_inserted", "U": "not_updated", "D": "not_deleted"}

Row = dict[str, Any]  # first_name, points, birth_date
Unset = Literal["absent", "empty"] | None


@dataclass
class Outcome:
    table: dict[str, Row]
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row_number, error_code)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("inserted", "updated", "deleted", "not_inserted", "not_updated", "not_deleted"), 0))


def is_unset(value: str | None, unset: Unset) -> bool:
    """Whether an update leaves the field as it is for this value."""
    return unset is not None and (value is None or unset == "empty" and value.strip() == "")


def _check(op: str, email: str, first_name: str | None, points: str | None, unset: Unset) -> str | None:
    """The error code of a record, checked in the order the Updater documents."""
    if email.strip() == "":
        return "KEY_MISSING"
    if op not in ("I", "U", "D"):
        return "BAD_OPERATION"
    if not EMAIL_RE.match(email.strip().lower()):
        return "INVALID_VALUE"
    if op == "D":
        return None
    # a U keeps a field it leaves unset; an I would leave it empty
    if (first_name or "").strip() == "" and (op == "I" or not is_unset(first_name, unset)):
        return "REQUIRED_FIELD_MISSING"
    if (points or "").strip() and not re.fullmatch(r"[+-]?\d+", (points or "").strip()):
        return "INVALID_VALUE"
    return None


def _value(field: str, text: str | None) -> Any:
    """A set field's value: None if empty, else the text (an int for points)."""
    if not (text or "").strip():
        return None
    return int(text or "") if field == "points" else text


def apply_sequentially(table: dict[str, Row], records: list[list[str | None]], *, upsert: bool,
                       unset: Unset = None) -> Outcome:
    """Apply ``records`` (COLUMNS as strings or None, row numbers from 1) to a copy of ``table``."""
    out = Outcome({k: dict(v) for k, v in table.items()})
    for row_number, (raw_op, raw_email, first_name, points) in enumerate(records, start=1):
        op, email = (raw_op or "").strip().upper(), raw_email or ""
        code = _check(op, email, first_name, points, unset)
        key = email.strip().lower()
        if code is None:
            given = {"first_name": first_name, "points": points} if op != "D" else {}
            values = {f: _value(f, v) for f, v in given.items() if not is_unset(v, unset)}
            exists = key in out.table
            if op == "I" and exists:
                code = "KEY_EXISTS"
            elif op in ("U", "D") and not exists and not (op == "U" and upsert):
                code = "KEY_NOT_FOUND"
            elif op == "U" and not exists and "first_name" not in values:
                code = "REQUIRED_FIELD_MISSING"
            elif op == "I" or (op == "U" and not exists):
                out.table[key] = {"first_name": None, "points": None, **values, "birth_date": None}
                out.counters["inserted"] += 1
            elif op == "U":
                out.table[key].update(values)
                out.counters["updated"] += 1
            else:
                del out.table[key]
                out.counters["deleted"] += 1
        if code is not None:
            out.failures.append((row_number, code))
            out.counters[NOT_COUNTER.get(op, "not_updated")] += 1
    return out


def random_records(rng: random.Random, n_records: int, n_keys: int, bad_ratio: float,
                   left_out: float = 0.0) -> list[list[str | None]]:
    """Random I/U/D records over ``n_keys`` keys (spelled with stray case and spaces),
    with about ``bad_ratio`` of them spoiled: unknown operation, no key, bad e-mail,
    empty required field, non-numeric points; ``left_out``: the share of first names and
    points left out (None), and as many more empty."""
    records = []
    for _ in range(n_records):
        k = rng.randrange(n_keys)
        email = rng.choice([f"k{k}@x.it", f" K{k}@X.it", f"k{k}@x.IT "])
        op = rng.choices(["I", "U", "D", " u", "d "], weights=[30, 40, 20, 5, 5])[0]
        first_name = rng.choice(["Anna", "José", "O'Neil", "multi\nline", '"quoted"', "  spaced  "])
        points = str(rng.randrange(-5, 1000)) if rng.random() > 0.1 else ""
        if rng.random() < bad_ratio:
            fault = rng.randrange(5)
            if fault == 0:
                op = rng.choice(["X", "", "UPD", "?"])
            elif fault == 1:
                email = "  "
            elif fault == 2:
                email = f"k{k} at x.it"
            elif fault == 3:
                first_name = " "
            else:
                points = "lots"
        values: list[str | None] = [first_name, points]
        for i in range(len(values) if left_out else 0):
            draw = rng.random()
            values[i] = None if draw < left_out else "" if draw < 2 * left_out else values[i]
        records.append([op, email, *values])
    return records
