"""What a Displacer or Exporter run exports: one SQL query, ordered and split by a key.

The plan counts the query's rows and cuts its key range into chunks; every
chunk runs ``COPY (query AND key in (lo, hi] ORDER BY key) TO STDOUT``, so
PostgreSQL itself formats, quotes, escapes and transcodes the rows (no Python
loop per row). Values are formatted the way the Importer reads them back:
dates and timestamps in the field's format (UTC), booleans as true/false.

CSV: every non-NULL value is quoted (FORCE_QUOTE *), so NULL is an unquoted
empty cell and the empty string is ``""`` (PostgreSQL's COPY convention, read
back exactly by an Importer with ``source.nulls: unquoted``). XML: one
``<RECORD>`` per line built by ``xmlelement``/``xmlforest`` (escaped by the
server); a NULL field is left out, an empty one is an empty element.

Exporter watermarks. A bigserial id is no watermark: ids are drawn when rows
are inserted, not when they commit, so an event with a small id may commit
after an export has read past it, and would be lost. Instead each event
carries the id of its inserting transaction (``xact_id``), and each export
records the snapshot taken when it was planned (``pg_current_snapshot()``).
A row becomes readable exactly when its transaction commits, and a snapshot
sees a committed transaction iff ``pg_visible_in_snapshot(xact_id, snap)``;
snapshots taken later see a superset. So the run with snapshot ``to`` after
the run with snapshot ``from`` exports the events visible in ``to`` and not
in ``from``: an event committed at the boundary (in flight in ``from``) goes
to the next run, once. The filter names the snapshots explicitly, so every
chunk (in its own transaction, at its own time) selects the same rows.
The plan takes the window (``exporter_window``), the reduce moves the
watermark in the transaction that records the delivery (``move_watermark``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from dx.shared.catalog import SQL_TYPES, ModuleDef, table_ident
from dx.shared.config import PATH_FIELD, FieldCfg, TargetCfg
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RunError
from dx.shared.report import neutralise_sql

#: The Exporter's raw event columns, in file order.
RAW_COLUMNS = ("event_id", "delivery_id", "campaign_id", "contact_key", "type", "occurred_at", "detail")
#: (column, SQL aggregate over platform.events) of the Exporter's per-delivery summary.
SUMMARY_COUNTS = (
    ("sent", "count(*) FILTER (WHERE type = 'sent')"),
    ("delivered", "count(*) FILTER (WHERE type = 'delivered')"),
    ("opens", "count(*) FILTER (WHERE type = 'open')"),
    ("unique_opens", "count(DISTINCT contact_key) FILTER (WHERE type = 'open')"),
    ("clicks", "count(*) FILTER (WHERE type = 'click')"),
    ("unique_clicks", "count(DISTINCT contact_key) FILTER (WHERE type = 'click')"),
    ("bounces_hard", "count(*) FILTER (WHERE type = 'bounce_hard')"),
    ("bounces_soft", "count(*) FILTER (WHERE type = 'bounce_soft')"),
    ("unsubscribes", "count(*) FILTER (WHERE type = 'unsubscribe')"),
    ("complaints", "count(*) FILTER (WHERE type = 'complaint')"),
)
#: (rate column, numerator, denominator), rounded to 4 decimals; empty when the denominator is 0.
SUMMARY_RATES = (
    ("delivery_rate", "delivered", "sent"),
    ("open_rate", "unique_opens", "delivered"),
    ("click_rate", "unique_clicks", "delivered"),
    ("click_to_open_rate", "unique_clicks", "unique_opens"),
    ("bounce_rate", "bounces_hard + bounces_soft", "sent"),
    ("unsubscribe_rate", "unsubscribes", "delivered"),
    ("complaint_rate", "complaints", "delivered"),
)
#: strftime directive -> to_char pattern; in UTC the offset %z is always +0000.
TO_CHAR = {"Y": "YYYY", "m": "MM", "d": "DD", "H": "HH24", "M": "MI", "S": "SS", "y": "YY", "f": "US",
           "I": "HH12", "p": "AM", "j": "DDD", "z": '"+0000"', "%": '"%"'}
#: PostgreSQL's name of each target encoding.
PG_ENCODINGS = {"utf-8": "UTF8", "latin-1": "LATIN1", "cp1252": "WIN1252"}
#: Characters that COPY's text format would escape, as XML character references.
XML_LINE_SAFE = (("\\", "&#92;"), ("\n", "&#10;"), ("\r", "&#13;"), ("\t", "&#9;"))
#: Keys sampled to cut a large Displacer export into chunks, from tables of at least SAMPLE_FROM_ROWS
#: rows (pg_class.reltuples), and fewest sampled keys that cut well (else the exact cut).
SAMPLE_KEYS = 20_000
SAMPLE_FROM_ROWS = 500_000
SAMPLE_KEYS_ENOUGH = 2_000
FILTER_OPS = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


@dataclass(frozen=True)
class ExportQuery:
    """Rows to export: column names, their text expressions, and the key to order and split by."""

    columns: list[str]
    values: list[sql.Composable]
    from_where: sql.Composable  # "FROM ... WHERE ...": a range on the key can be ANDed to it
    params: list[Any]
    key: sql.Composable
    key_type: str
    table: sql.Composable | None = None  # the one table read, if so: FROM it WHERE ``where`` is from_where
    where: sql.Composable | None = None


#: Characters XML 1.0 cannot carry, not even as character references (text holds no NUL).
XML_FORBIDDEN_RE = "[\\x01-\\x08\\x0B\\x0C\\x0E-\\x1F\\uFFFE\\uFFFF]"


def xml_unsafe(conn: Conn, q: ExportQuery) -> tuple[str, str] | None:
    """The first (column, key) of the rows to export whose value XML 1.0 cannot carry; None if none."""
    forbidden = sql.Literal(XML_FORBIDDEN_RE)
    which = sql.SQL(" ").join(sql.SQL("WHEN {} ~ {} THEN {}").format(v, forbidden, sql.Literal(c))
                              for v, c in zip(q.values, q.columns, strict=True))
    any_bad = sql.SQL(" OR ").join(sql.SQL("{} ~ {}").format(v, forbidden) for v in q.values)
    row = conn.execute(sql.SQL("SELECT {}::text AS key, CASE {} END AS col {} AND ({}) ORDER BY {} LIMIT 1").format(
        q.key, which, q.from_where, any_bad, q.key), q.params).fetchone()
    return None if row is None else (row["col"], row["key"])


def render_path(template: str, now: datetime, run_id: int, module: str) -> str:
    """The target path of a run: {date:FORMAT} in the module's time zone, {run}, {module}."""
    def value(m: re.Match[str]) -> str:
        name, _, fmt = m.group(1).partition(":")
        if name == "date":
            return now.strftime(fmt or "%Y-%m-%d")
        return str(run_id) if name == "run" else module
    return PATH_FIELD.sub(value, template)


def to_char_format(fmt: str) -> str:
    """A strftime format as a to_char pattern, literal text quoted; ValueError if unsupported."""
    out, literal, i = [], "", 0
    while i < len(fmt):
        if fmt[i] != "%":
            literal += fmt[i]
            i += 1
            continue
        code = fmt[i + 1: i + 2]
        if code not in TO_CHAR:
            raise ValueError(f"format {fmt!r}: %{code} cannot be exported (supported: "
                             f"{' '.join('%' + c for c in TO_CHAR)})")
        if literal:
            out.append('"' + literal.replace("\\", "\\\\").replace('"', '\\"') + '"')
            literal = ""
        out.append(TO_CHAR[code])
        i += 2
    if literal:
        out.append('"' + literal.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "".join(out)


def _value(col: sql.Composable, f: FieldCfg, spreadsheet: bool, xml: bool = False) -> sql.Composable:
    """A field as the text the Importer reads back (timestamps in UTC: the session's zone; DateStyle ISO).

    Numbers, dates and timestamps go to a CSV file as COPY writes them, which is their text output
    (a cast to text would make the same text once more: about 10% of the chunk query's time);
    ``xmlforest`` writes them in XML Schema's forms (``T`` in a timestamp), so XML gets the text."""
    text = sql.SQL("::text" if xml else "")
    match f.type:
        case "int" | "decimal":
            return sql.SQL("{}{}").format(col, text)
        case "bool":  # boolean's cast to text says true/false (COPY's output, t/f)
            return sql.SQL("{}::text").format(col)
        # the default forms are PostgreSQL's own output with DateStyle ISO (a third of to_char's time):
        # YYYY-MM-DD, and HH:MM:SS with as many fraction digits as needed (none for whole seconds)
        case "date" | "timestamp" if f.output_format:
            return sql.SQL("to_char({}, {})").format(col, sql.Literal(to_char_format(f.output_format)))
        case "date":
            return sql.SQL("{}{}").format(col, text)
        case "timestamp":
            return sql.SQL("{}::timestamp{}").format(col, text)
        case _:
            return neutralise_sql(col) if spreadsheet else col


def _filter(mdef: ModuleDef) -> tuple[list[sql.Composable], list[Any]]:
    conds: list[sql.Composable] = []
    params: list[Any] = []
    for j, cond in enumerate(mdef.module.filter or []):
        f = mdef.database.fields.get(cond.field)
        if f is None:
            raise RunError(ErrorCode.CONFIG_INVALID,
                           f"filter[{j}].field: {cond.field!r} is not a field of database {mdef.database.id!r}")
        col, typ = sql.Identifier(cond.field), sql.SQL(SQL_TYPES[f.type])
        if cond.op in ("null", "not_null"):
            conds.append(sql.SQL("{} IS {}NULL").format(col, sql.SQL("NOT " if cond.op == "not_null" else "")))
        elif cond.op == "in":
            conds.append(sql.SQL("{} = ANY(%s::{}[])").format(col, typ))
            params.append([str(v) for v in cond.value])
        else:
            conds.append(sql.SQL("{} {} %s::{}").format(col, sql.SQL(FILTER_OPS[cond.op]), typ))
            params.append(str(cond.value))
    return conds, params


def displacer_query(mdef: ModuleDef) -> ExportQuery:
    """The database's rows: all fields or the chosen ones, filtered, by primary key."""
    db, module = mdef.database, mdef.module
    assert module.target is not None
    names = module.fields or list(db.fields)
    unknown = [n for n in names if n not in db.fields]
    if unknown:
        raise RunError(ErrorCode.CONFIG_INVALID, f"fields: {', '.join(unknown)} not in database {db.id!r}")
    values = [_value(sql.Identifier(n), db.fields[n], module.target.spreadsheet, module.target.format == "xml")
              for n in names]
    conds, params = _filter(mdef)
    where = sql.SQL(" AND ").join([sql.SQL("true"), *conds])
    table = table_ident(db.tenant, db.id)
    return ExportQuery(names, values, sql.SQL("FROM {} WHERE {}").format(table, where), params,
                       sql.Identifier(db.primary_key), SQL_TYPES[db.fields[db.primary_key].type], table, where)


def _window(snapshot_from: str | None, snapshot_to: str) -> tuple[sql.Composable, list[Any]]:
    """Events committed in the window: visible in ``to``, not in ``from`` (see the module docstring)."""
    cond: sql.Composable = sql.SQL(
        "pg_visible_in_snapshot(xact_id, %s::pg_snapshot) AND xact_id < pg_snapshot_xmax(%s::pg_snapshot)")
    params: list[Any] = [snapshot_to, snapshot_to]
    if snapshot_from is not None:
        # the range on xact_id lets the index skip every event an earlier export took
        cond = sql.SQL("{} AND xact_id >= pg_snapshot_xmin(%s::pg_snapshot)"
                       " AND NOT pg_visible_in_snapshot(xact_id, %s::pg_snapshot)").format(cond)
        params += [snapshot_from, snapshot_from]
    return cond, params


class Busy(Exception):
    """Another run of the same Exporter is in flight."""


def exporter_window(conn: Conn, module_id: str, run_id: int) -> tuple[str | None, str]:
    """An Exporter run's window, in its plan's transaction: from the module's watermark (None: from the
    first event) to the snapshot taken now. Busy while another run of the module is in flight: a
    watermark is never read by two exports at once."""
    conn.execute("SELECT 1 FROM dx.modules WHERE id = %s FOR UPDATE", (module_id,))  # one planner at a time
    busy = conn.execute(
        "SELECT e.run_id FROM dx.exports e JOIN dx.runs r ON r.id = e.run_id WHERE e.module = %s"
        " AND e.run_id <> %s AND r.status IN ('queued', 'running') LIMIT 1", (module_id, run_id)).fetchone()
    if busy:
        raise Busy(f"run {busy['run_id']} of this module is still exporting; this run was skipped")
    mark = conn.execute("SELECT snapshot::text AS s FROM dx.export_watermarks WHERE module = %s",
                        (module_id,)).fetchone()
    snapshot_from = mark["s"] if mark else None
    now_row = conn.execute("SELECT pg_current_snapshot()::text AS s").fetchone()
    assert now_row is not None
    return snapshot_from, now_row["s"]


def move_watermark(conn: Conn, module_id: str, snapshot_to: str, run_id: int) -> None:
    """In the transaction that records a delivery: the run's snapshot becomes its Exporter's watermark."""
    conn.execute(
        "INSERT INTO dx.export_watermarks (module, snapshot, run_id) VALUES (%s, %s::pg_snapshot, %s)"
        " ON CONFLICT (module) DO UPDATE SET snapshot = EXCLUDED.snapshot, run_id = EXCLUDED.run_id,"
        " moved_at = now()", (module_id, snapshot_to, run_id))


def exporter_query(mdef: ModuleDef, snapshot_from: str | None, snapshot_to: str) -> ExportQuery:
    """Raw events of the window by id, or per-delivery summaries of the deliveries the window touched."""
    tenant, database = mdef.database.tenant, mdef.database.id
    spreadsheet = mdef.module.target is not None and mdef.module.target.spreadsheet
    window, wparams = _window(snapshot_from, snapshot_to)
    if mdef.module.events != "summary":
        text = FieldCfg.model_validate({"type": "text"})
        raw: list[sql.Composable] = [sql.SQL("id::text"), sql.SQL("delivery_id::text"), sql.SQL("campaign_id::text"),
                  _value(sql.Identifier("contact_key"), text, spreadsheet), sql.SQL("type"),
                  sql.SQL("""to_char(occurred_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""),
                  _value(sql.Identifier("detail"), text, spreadsheet)]
        from_where = sql.SQL("FROM platform.events WHERE tenant = %s AND database = %s AND {}").format(window)
        return ExportQuery(list(RAW_COLUMNS), raw, from_where, [tenant, database, *wparams],
                           sql.SQL("id"), "bigint")
    counts = sql.SQL(", ").join(sql.SQL(f"{expr} AS {name}") for name, expr in SUMMARY_COUNTS)
    seen, _ = _window(snapshot_to=snapshot_to, snapshot_from=None)
    from_where = sql.SQL(
        "FROM (SELECT delivery_id, min(campaign_id) AS campaign_id, {counts} FROM platform.events"
        " WHERE tenant = %s AND database = %s AND {seen} AND delivery_id IN (SELECT delivery_id"
        " FROM platform.events WHERE tenant = %s AND database = %s AND {window}) GROUP BY delivery_id) s WHERE true"
    ).format(counts=counts, seen=seen, window=window)
    params = [tenant, database, snapshot_to, snapshot_to, tenant, database, *wparams]
    columns = ["delivery_id", "campaign_id", *(n for n, _ in SUMMARY_COUNTS), *(n for n, _, _ in SUMMARY_RATES)]
    values: list[sql.Composable] = [sql.SQL(f"{c}::text") for c in columns[: 2 + len(SUMMARY_COUNTS)]]
    values += [sql.SQL(f"round(({num})::numeric / nullif({den}, 0), 4)::text") for _, num, den in SUMMARY_RATES]
    return ExportQuery(columns, values, from_where, params, sql.SQL("delivery_id"), "bigint")


def count_and_bounds(conn: Conn, q: ExportQuery, chunk_rows: int, max_chunks: int) -> tuple[int, list[str]]:
    """Rows to export (estimated from a sample of a large table), and the keys that end each chunk
    but the last (as text)."""
    sampled = _sampled_bounds(conn, q, chunk_rows, max_chunks)
    if sampled is not None:
        return sampled
    row = conn.execute(sql.SQL("SELECT count(*) AS n {}").format(q.from_where), q.params).fetchone()
    n = int(row["n"]) if row else 0
    k = min(max_chunks, math.ceil(n / chunk_rows))
    if k <= 1:
        return n, []
    step = math.ceil(n / k)
    rows = conn.execute(sql.SQL(
        "SELECT k::text AS k FROM (SELECT {key} AS k, row_number() OVER (ORDER BY {key}) AS rn {fw}) s"
        " WHERE rn %% %s = 0 AND rn < %s ORDER BY rn").format(key=q.key, fw=q.from_where),
        [*q.params, step, n]).fetchall()
    return n, [r["k"] for r in rows]


def _sampled_bounds(conn: Conn, q: ExportQuery, chunk_rows: int, max_chunks: int) -> tuple[int, list[str]] | None:
    """Cut points read from a sample of the table's rows (``TABLESAMPLE BERNOULLI``): the exact cut
    numbers every row in key order before any chunk starts; a sample of about SAMPLE_KEYS keys is
    much cheaper, and the chunks differ in size by a percent or two (a sample of whole pages, SYSTEM,
    makes chunks far apart where rows are stored in an order close to the key's). Every row still falls in exactly one chunk: the cut points
    only have to be keys in order. None (cut exactly) for a small table, one never analysed, or a
    filter that leaves too few sampled rows."""
    if q.table is None or q.where is None:
        return None
    row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
                       (q.table.as_string(conn),)).fetchone()
    if row is None or row["reltuples"] < SAMPLE_FROM_ROWS:
        return None
    percent = min(100.0, 100.0 * SAMPLE_KEYS / row["reltuples"])
    keys = [r["#k"] for r in conn.execute(sql.SQL(  # "#k": ORDER BY must not find an output column of the key's name
        'SELECT {key}::text AS "#k" FROM {t} TABLESAMPLE BERNOULLI (%s) WHERE {w} ORDER BY {key}').format(
        key=q.key, t=q.table, w=q.where), [percent, *q.params])]
    if len(keys) < SAMPLE_KEYS_ENOUGH:
        return None
    n = round(len(keys) * 100.0 / percent)
    k = min(max_chunks, max(1, round(n / chunk_rows)))  # n is estimated: 1M rows make 4 chunks, never 5
    return n, [keys[len(keys) * i // k] for i in range(1, k)]


def copy_statement(q: ExportQuery, target: TargetCfg, bounds: list[str],
                   chunk_no: int) -> tuple[sql.Composed, list[Any]]:
    """COPY of chunk ``chunk_no``: the rows with key in (bounds[n-1], bounds[n]], formatted."""
    conds, params = [], list(q.params)
    cast = sql.SQL(q.key_type)
    if chunk_no > 0:
        conds.append(sql.SQL(" AND {} > %s::{}").format(q.key, cast))
        params.append(bounds[chunk_no - 1])
    if chunk_no < len(bounds):
        conds.append(sql.SQL(" AND {} <= %s::{}").format(q.key, cast))
        params.append(bounds[chunk_no])
    if target.format == "xml":
        forest = sql.SQL(", ").join(sql.SQL("{} AS {}").format(v, sql.Identifier(c))
                                    for v, c in zip(q.values, q.columns, strict=True))
        line: sql.Composable = sql.SQL("xmlelement(name {}, xmlforest({}))::text").format(
            sql.Identifier(target.record_element), forest)
        for char, ref in XML_LINE_SAFE:  # one record per line, which COPY's text format leaves as it is
            line = sql.SQL("replace({}, {}, {})").format(line, sql.Literal(char), sql.Literal(ref))
        select, options = line, sql.SQL("FORMAT text")  # type: sql.Composable, sql.Composable
    else:
        # output names no field can have: ORDER BY a name would pick an output column (text) over the key
        select = sql.SQL(", ").join(sql.SQL("{} AS {}").format(v, sql.Identifier(f"#{i}"))
                                    for i, v in enumerate(q.values))
        options = sql.SQL("FORMAT csv, DELIMITER {}, FORCE_QUOTE *").format(sql.Literal(target.delimiter))
    statement = sql.SQL("COPY (SELECT {} {}{} ORDER BY {}) TO STDOUT ({}, ENCODING {})").format(
        select, q.from_where, sql.Composed(conds), q.key, options, sql.Literal(PG_ENCODINGS[target.encoding]))
    return statement, params
