"""A plain sequential Updater: the oracle the real one is compared with.

It applies records one by one, in source order, with the documented rules of the Updater
written as simply as possible, over the test database of the updater tests:
``email`` (key), ``first_name`` (text, required), ``points`` (int) and
``birth_date`` (not in the source files, so U keeps it and I leaves it empty).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

#: The database the updater tests declare.
FIELDS: dict[str, Any] = {"email": {"type": "email", "required": True},
                          "first_name": {"type": "text", "required": True},
                          "points": "int", "birth_date": {"type": "date", "format": "%d/%m/%Y"}}
COLUMNS = ["operation", "email", "first_name", "points"]
EMAIL_RE = re.compile(r"^[^@\s]+@([^@\s.]+\.)+[^@\s.]+$")
NOT_COUNTER = {"I": "not_inserted", "U": "not_updated", "D": "not_deleted"}

Row = dict[str, Any]  # first_name, points, birth_date


@dataclass
class Outcome:
    table: dict[str, Row]
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row_number, error_code)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("inserted", "updated", "deleted", "not_inserted", "not_updated", "not_deleted"), 0))


def _check(op: str, email: str, first_name: str, points: str) -> str | None:
    """The error code of a record, checked in the order the Updater documents."""
    if email.strip() == "":
        return "KEY_MISSING"
    if op not in ("I", "U", "D"):
        return "BAD_OPERATION"
    if not EMAIL_RE.match(email.strip().lower()):
        return "INVALID_VALUE"
    if op == "D":
        return None
    if first_name.strip() == "":
        return "REQUIRED_FIELD_MISSING"
    if points.strip() and not re.fullmatch(r"[+-]?\d+", points.strip()):
        return "INVALID_VALUE"
    return None


def apply_sequentially(table: dict[str, Row], records: list[list[str]], *, upsert: bool) -> Outcome:
    """Apply ``records`` (COLUMNS as strings, row numbers from 1) to a copy of ``table``."""
    out = Outcome({k: dict(v) for k, v in table.items()})
    for row_number, (raw_op, email, first_name, points) in enumerate(records, start=1):
        op = raw_op.strip().upper()
        code = _check(op, email, first_name, points)
        key = email.strip().lower()
        if code is None:
            values = {"first_name": first_name, "points": int(points) if points.strip() and op != "D" else None}
            exists = key in out.table
            if op == "I" and exists:
                code = "KEY_EXISTS"
            elif op in ("U", "D") and not exists and not (op == "U" and upsert):
                code = "KEY_NOT_FOUND"
            elif op == "I" or (op == "U" and not exists):
                out.table[key] = {**values, "birth_date": None}
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


def random_records(rng: random.Random, n_records: int, n_keys: int, bad_ratio: float) -> list[list[str]]:
    """Random I/U/D records over ``n_keys`` keys (spelled with stray case and spaces),
    with about ``bad_ratio`` of them spoiled: unknown operation, no key, bad e-mail,
    empty required field, non-numeric points."""
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
        records.append([op, email, first_name, points])
    return records
