"""What an overwrite keeps of the contact table it replaces: the objects the client made on it.

An overwrite loads a shadow table and renames it into the contact table's place
(``importer.finish_overwrite``). The client's objects belong to the table
replaced, so ``swap``, in the reduce's transaction and under its lock on the
contact table:

1. reads them while the contact table still has its name (``_capture``): their
   definitions, deparsed by PostgreSQL, name the table by that name;
2. sets the old table aside (``_set_aside``): renamed, with its indexes and
   statistics objects (their names are unique in the schema), and the foreign
   keys of other tables that reference it dropped;
3. renames the shadow table into place and makes them again on it
   (``_restore``), so that the same definitions now name the new table: owner,
   NOT NULL, constraints (CHECK, UNIQUE, EXCLUDE, foreign keys it holds),
   indexes (built now that the data is in), statistics objects, foreign keys
   of other tables referencing it, triggers (with their enabled state), rules,
   row security and policies, the clustering index, grants on the table and
   its columns, comments (table, columns, indexes, constraints, triggers,
   rules, policies, statistics) and sequences owned by its columns. A view on
   the table is replaced in place (CREATE OR REPLACE VIEW), so its grants,
   comments, owner and the views on it stay as they are.

The new content that breaks a constraint fails the swap with
CONSTRAINT_VIOLATED; a dependent object an overwrite cannot keep (a
materialized view, a function over the table's row type, another table's
policy or rule reading it) or one the workers' role may not make again fails it
with TABLE_OBJECT_NOT_KEPT. Either undoes the whole swap (a savepoint): the
table keeps its content and every object. Not an actor module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from dx.shared.catalog import table_ident, tenant_schema
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RunError

#: The table privileges GRANT and REVOKE name, as aclexplode reports them.
PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"})
#: The options a view may carry (pg_class.reloptions of a view).
VIEW_OPTIONS = frozenset({"check_option", "security_barrier", "security_invoker"})
#: A policy's command, by pg_policy.polcmd.
POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
#: How ALTER TABLE sets a trigger's state, by pg_trigger.tgenabled ("O", enabled, is a new trigger's state).
TRIGGER_STATES = {"D": "DISABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}
#: pg_rewrite.ev_enabled likewise, for rules.
RULE_STATES = TRIGGER_STATES

Row = dict[str, Any]


@dataclass
class _Objects:
    """The contact table's objects, as ``_capture`` read them."""

    table: Row
    #: {(grantee, or None for PUBLIC; privilege): grantable} of the table (its owner's defaults if never granted)
    acl: dict[tuple[str | None, str], bool]
    #: the shadow table's owner and privileges (their defaults, or the schema's default privileges)
    shadow_owner: str
    shadow_acl: dict[tuple[str | None, str], bool]
    not_null: list[str]
    column_comments: list[Row]
    column_acl: list[Row]
    indexes: list[Row]
    constraints: list[Row]
    referencing: list[Row]
    triggers: list[Row]
    rules: list[Row]
    policies: list[Row]
    statistics: list[Row]
    sequences: list[Row]
    views: list[Row]


def swap(conn: Conn, tenant: str, table: str, shadow: str, shadow_key: str, replaced: str) -> None:
    """Rename table ``shadow`` (its primary key named ``shadow_key``) into the place of ``table``,
    which becomes ``replaced``, keeping the client's objects (see the module's docstring); in the
    caller's transaction, which holds the lock on ``table``. RunError, with nothing changed, when it
    cannot."""
    step = "reading the table's objects"
    try:
        with conn.transaction():  # a savepoint: a refused swap leaves the table and its objects as they were
            objects = _capture(conn, table_ident(tenant, table), table_ident(tenant, shadow))
            step = "setting the replaced table aside"
            _set_aside(conn, objects, tenant, table, replaced)
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(tenant, shadow),
                                                                      sql.Identifier(table)))
            for what, statement in _restore(objects, tenant, table, shadow_key):
                step = what
                conn.execute(statement)
            step = "granting the table's privileges"
            for statement in _grants(conn, objects, table_ident(tenant, table)):
                conn.execute(statement)
    except (psycopg.IntegrityError, psycopg.DataError) as exc:
        raise RunError(ErrorCode.CONSTRAINT_VIOLATED, f"the new content breaks the table's rules ({step}): "
                       f"{_describe(exc)}") from exc
    except (psycopg.ProgrammingError, psycopg.NotSupportedError) as exc:
        raise RunError(ErrorCode.TABLE_OBJECT_NOT_KEPT, f"{step}: {_describe(exc)}") from exc


def _describe(exc: psycopg.Error) -> str:
    """PostgreSQL's message and its detail, on one line."""
    diag = exc.diag
    text = diag.message_primary or str(exc)
    return f"{text} ({diag.message_detail})" if diag.message_detail else text


def _capture(conn: Conn, target: sql.Identifier, shadow: sql.Identifier) -> _Objects:
    """The objects of the contact table and those depending on it, in one query; RunError if one of
    them is of a kind an overwrite cannot keep."""
    row = conn.execute(_CAPTURE, {"t": target.as_string(conn), "shadow": shadow.as_string(conn)}).fetchone()
    assert row is not None
    if row["unkept"]:
        raise RunError(ErrorCode.TABLE_OBJECT_NOT_KEPT, "an overwrite cannot keep what depends on the table: "
                       + "; ".join(row["unkept"]) + " (drop it, or use upsert)")
    columns = row["columns"]
    return _Objects(
        table=row["table"], acl=_acl(row["acl"]), shadow_owner=row["shadow_owner"], shadow_acl=_acl(row["shadow_acl"]),
        not_null=[c["name"] for c in columns if c["not_null"] and not c["in_key"]],
        column_comments=[c for c in columns if c["comment"] is not None], column_acl=row["column_acl"],
        **{k: row[k] for k in ("indexes", "constraints", "referencing", "triggers", "rules", "policies", "statistics",
                               "sequences", "views")})


def _acl(rows: list[Row]) -> dict[tuple[str | None, str], bool]:
    """{(grantee, or None for PUBLIC; privilege): grantable} of aclexplode's ``rows``."""
    return {(r["grantee"], r["privilege"]): r["grantable"] for r in rows}


#: Every object ``_capture`` reads, each kind a JSON array, of table ``t`` (and the owner and privileges of
#: table ``shadow``). ``unkept``: what depends on the table or its row type that an overwrite cannot keep,
#: anything but its own objects, the views on it and other tables' foreign keys referencing it.
_CAPTURE = """
WITH o AS (SELECT c.oid AS t, c.reltype AS type FROM pg_class c WHERE c.oid = %(t)s::regclass)
SELECT
  (SELECT json_build_object('owner', pg_get_userbyid(c.relowner), 'row_security', c.relrowsecurity,
            'force_row_security', c.relforcerowsecurity, 'comment', obj_description(c.oid, 'pg_class'))
     FROM pg_class c WHERE c.oid = o.t) AS table,
  (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = %(shadow)s::regclass) AS shadow_owner,
  (SELECT coalesce(json_agg(x), '[]') FROM (
     SELECT CASE WHEN e.grantee = 0 THEN NULL ELSE pg_get_userbyid(e.grantee) END AS grantee,
            e.privilege_type AS privilege, e.is_grantable AS grantable
     FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) e WHERE c.oid = o.t) x) AS acl,
  (SELECT coalesce(json_agg(x), '[]') FROM (
     SELECT CASE WHEN e.grantee = 0 THEN NULL ELSE pg_get_userbyid(e.grantee) END AS grantee,
            e.privilege_type AS privilege, e.is_grantable AS grantable
     FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) e
     WHERE c.oid = %(shadow)s::regclass) x) AS shadow_acl,
  (SELECT coalesce(json_agg(x ORDER BY x.attnum), '[]') FROM (
     SELECT a.attnum, a.attname AS name, a.attnotnull AS not_null, col_description(a.attrelid, a.attnum) AS comment,
            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisprimary
                    AND a.attnum = ANY(i.indkey)) AS in_key
     FROM pg_attribute a WHERE a.attrelid = o.t AND a.attnum > 0 AND NOT a.attisdropped) x) AS columns,
  (SELECT coalesce(json_agg(x ORDER BY x.attnum), '[]') FROM (
     SELECT a.attnum, a.attname AS name, CASE WHEN e.grantee = 0 THEN NULL ELSE pg_get_userbyid(e.grantee) END AS grantee,
            e.privilege_type AS privilege, e.is_grantable AS grantable
     FROM pg_attribute a, aclexplode(a.attacl) e WHERE a.attrelid = o.t AND a.attnum > 0 AND NOT a.attisdropped) x
  ) AS column_acl,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT i.indexrelid::bigint AS oid, x.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
            c.conname AS constraint_name, i.indisprimary AS is_primary, i.indisclustered AS clustered,
            obj_description(i.indexrelid, 'pg_class') AS comment
     FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
     LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
     WHERE i.indrelid = o.t AND (i.indisvalid OR c.oid IS NOT NULL)) x) AS indexes,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT oid::bigint, conname AS name, contype AS type, pg_get_constraintdef(oid) AS definition,
            obj_description(oid, 'pg_constraint') AS comment
     FROM pg_constraint WHERE conrelid = o.t AND contype <> 't') x) AS constraints,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT c.oid::bigint, n.nspname AS schema, r.relname AS table, c.conname AS name,
            pg_get_constraintdef(c.oid) AS definition, obj_description(c.oid, 'pg_constraint') AS comment
     FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
     WHERE c.confrelid = o.t AND c.conrelid <> o.t AND c.contype = 'f' AND c.conparentid = 0) x) AS referencing,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT oid::bigint, tgname AS name, pg_get_triggerdef(oid) AS definition, tgenabled AS enabled,
            obj_description(oid, 'pg_trigger') AS comment
     FROM pg_trigger WHERE tgrelid = o.t AND NOT tgisinternal) x) AS triggers,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT oid::bigint, rulename AS name, pg_get_ruledef(oid) AS definition, ev_enabled AS enabled,
            obj_description(oid, 'pg_rewrite') AS comment
     FROM pg_rewrite WHERE ev_class = o.t) x) AS rules,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT oid::bigint, polname AS name, polpermissive AS permissive, polcmd AS command,
            ARRAY(SELECT CASE WHEN r = 0 THEN NULL ELSE pg_get_userbyid(r) END FROM unnest(polroles) r) AS roles,
            pg_get_expr(polqual, polrelid) AS qual, pg_get_expr(polwithcheck, polrelid) AS with_check,
            obj_description(oid, 'pg_policy') AS comment
     FROM pg_policy WHERE polrelid = o.t) x) AS policies,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT s.oid::bigint, n.nspname AS schema, s.stxname AS name, pg_get_statisticsobjdef(s.oid) AS definition,
            obj_description(s.oid, 'pg_statistic_ext') AS comment
     FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE s.stxrelid = o.t) x) AS statistics,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT s.oid::bigint, n.nspname AS schema, s.relname AS name, a.attname AS column FROM pg_depend d
     JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_namespace n ON n.oid = s.relnamespace
     JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = o.t
       AND d.deptype = 'a') x) AS sequences,
  (SELECT coalesce(json_agg(x ORDER BY x.oid), '[]') FROM (
     SELECT DISTINCT v.oid::bigint, n.nspname AS schema, v.relname AS name, pg_get_viewdef(v.oid) AS definition,
            v.reloptions AS options
     FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid
     JOIN pg_class v ON v.oid = w.ev_class JOIN pg_namespace n ON n.oid = v.relnamespace
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = o.t
       AND v.relkind = 'v') x) AS views,
  ARRAY(
    SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
    WHERE d.deptype = 'n'
      AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = o.t)
           OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = o.type))
      AND NOT (d.classid = 'pg_class'::regclass AND d.objid = o.t)
      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE d.classid = 'pg_constraint'::regclass AND c.oid = d.objid
                      AND (c.conrelid = o.t OR (c.contype = 'f' AND c.confrelid = o.t AND c.conparentid = 0)))
      AND NOT EXISTS (SELECT 1 FROM pg_rewrite w JOIN pg_class v ON v.oid = w.ev_class
                      WHERE d.classid = 'pg_rewrite'::regclass AND w.oid = d.objid
                      AND (w.ev_class = o.t OR v.relkind = 'v'))
      AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE d.classid = 'pg_policy'::regclass AND p.oid = d.objid
                      AND p.polrelid = o.t)
      AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE d.classid = 'pg_trigger'::regclass AND g.oid = d.objid
                      AND g.tgrelid = o.t)
      AND NOT EXISTS (SELECT 1 FROM pg_attrdef a WHERE d.classid = 'pg_attrdef'::regclass AND a.oid = d.objid
                      AND a.adrelid = o.t)
      AND NOT EXISTS (SELECT 1 FROM pg_statistic_ext s WHERE d.classid = 'pg_statistic_ext'::regclass
                      AND s.oid = d.objid AND s.stxrelid = o.t)
    ORDER BY 1) AS unkept
FROM o"""


def _grants(conn: Conn, objects: _Objects, t: sql.Identifier) -> list[sql.SQL | sql.Composed]:
    """GRANT and REVOKE that give the new table (owned as the old one) the old one's privileges on it and
    its columns, granted by its owner."""
    now = objects.shadow_acl
    if objects.shadow_owner != objects.table["owner"]:  # the change of owner changed the owner's entries
        now = _acl(conn.execute(
            "SELECT CASE WHEN e.grantee = 0 THEN NULL ELSE pg_get_userbyid(e.grantee) END AS grantee,"
            " e.privilege_type AS privilege, e.is_grantable AS grantable"
            " FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) e"
            " WHERE c.oid = %s::regclass", (t.as_string(conn),)).fetchall())
    statements: list[sql.SQL | sql.Composed] = []
    for (grantee, privilege) in sorted(objects.acl.keys() | now.keys(), key=lambda g: (g[0] or "", g[1])):
        if privilege not in PRIVILEGES:
            raise RunError(ErrorCode.TABLE_OBJECT_NOT_KEPT, f"privilege {privilege} on the table is not known")
        before, after = objects.acl.get((grantee, privilege)), now.get((grantee, privilege))
        to = sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
        if before is None:
            statements.append(sql.SQL("REVOKE {} ON TABLE {} FROM {}").format(sql.SQL(privilege), t, to))
        elif after is None or (before and not after):
            statements.append(sql.SQL("GRANT {} ON TABLE {} TO {}{}").format(
                sql.SQL(privilege), t, to, sql.SQL(" WITH GRANT OPTION" if before else "")))
        elif after and not before:
            statements.append(sql.SQL("REVOKE GRANT OPTION FOR {} ON TABLE {} FROM {}").format(
                sql.SQL(privilege), t, to))
    for g in objects.column_acl:
        if g["privilege"] not in PRIVILEGES:
            raise RunError(ErrorCode.TABLE_OBJECT_NOT_KEPT, f"privilege {g['privilege']} on a column is not known")
        statements.append(sql.SQL("GRANT {} ({}) ON TABLE {} TO {}{}").format(
            sql.SQL(g["privilege"]), sql.Identifier(g["name"]), t,
            sql.SQL("PUBLIC") if g["grantee"] is None else sql.Identifier(g["grantee"]),
            sql.SQL(" WITH GRANT OPTION" if g["grantable"] else "")))
    return statements


def _set_aside(conn: Conn, objects: _Objects, tenant: str, table: str, replaced: str) -> None:
    """Rename the contact table to ``replaced``, free the schema-wide names of its indexes and statistics
    objects, and drop the foreign keys of other tables that reference it (``_restore`` makes them again)."""
    for fk in objects.referencing:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            sql.Identifier(fk["schema"], fk["table"]), sql.Identifier(fk["name"])))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(tenant, table), sql.Identifier(replaced)))
    old = table_ident(tenant, replaced)
    for index in objects.indexes:
        aside = sql.Identifier(f"dx_old_{index['oid']}")  # unique in the schema, within 63 bytes
        if index["constraint_name"] is not None:  # renaming the constraint renames its index
            conn.execute(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                old, sql.Identifier(index["constraint_name"]), aside))
        else:
            conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(tenant_schema(tenant), index["name"]), aside))
    for stat in objects.statistics:
        conn.execute(sql.SQL("ALTER STATISTICS {} RENAME TO {}").format(
            sql.Identifier(stat["schema"], stat["name"]), sql.Identifier(f"dx_old_{stat['oid']}")))


def _restore(objects: _Objects, tenant: str, table: str,
             shadow_key: str) -> list[tuple[str, sql.SQL | sql.Composed]]:
    """The statements, each with what it does, that make the ``objects`` again on the new contact table
    (the shadow table renamed ``table``). A captured definition names the contact table: it now means
    the new one. Catalog text is only ever an argument of ``format``, never its template."""
    t = table_ident(tenant, table)
    done: list[tuple[str, sql.SQL | sql.Composed]] = []

    def add(step: str, statement: sql.SQL | sql.Composed) -> None:
        done.append((step, statement))

    primary = next((i for i in objects.indexes if i["is_primary"]), None)
    if primary is not None:
        add("naming the primary key", sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            t, sql.Identifier(shadow_key), sql.Identifier(primary["constraint_name"])))
    if objects.shadow_owner != objects.table["owner"]:
        add("giving the table its owner", sql.SQL("ALTER TABLE {} OWNER TO {}").format(
            t, sql.Identifier(objects.table["owner"])))
    # one ALTER TABLE: its CHECK and NOT NULL are verified in one scan of the table
    checks = [sql.SQL("ALTER COLUMN {} SET NOT NULL").format(sql.Identifier(c)) for c in objects.not_null]
    checks += [sql.SQL("ADD CONSTRAINT {} {}").format(sql.Identifier(c["name"]), sql.SQL(c["definition"]))
               for c in objects.constraints if c["type"] != "p"]
    if checks:
        names = [f"NOT NULL {c}" for c in objects.not_null] + [c["name"] for c in objects.constraints
                                                               if c["type"] != "p"]
        add(f"adding the constraints {', '.join(names)}",
            sql.SQL("ALTER TABLE {} {}").format(t, sql.SQL(", ").join(checks)))
    for index in objects.indexes:
        if index["constraint_name"] is None:
            add(f"building the index {index['name']}", sql.SQL(index["definition"]))
    for stat in objects.statistics:
        add(f"making the statistics object {stat['name']}", sql.SQL(stat["definition"]))
    for fk in objects.referencing:
        add(f"adding the foreign key {fk['name']} of table {fk['schema']}.{fk['table']}",
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(fk["schema"], fk["table"]), sql.Identifier(fk["name"]), sql.SQL(fk["definition"])))
    for trigger in objects.triggers:
        add(f"making the trigger {trigger['name']}", sql.SQL(trigger["definition"]))
        if trigger["enabled"] in TRIGGER_STATES:
            add(f"setting the state of trigger {trigger['name']}", sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
                t, sql.SQL(TRIGGER_STATES[trigger["enabled"]]), sql.Identifier(trigger["name"])))
    for rule in objects.rules:
        add(f"making the rule {rule['name']}", sql.SQL(rule["definition"].rstrip().rstrip(";")))
        if rule["enabled"] in RULE_STATES:
            add(f"setting the state of rule {rule['name']}", sql.SQL("ALTER TABLE {} {} RULE {}").format(
                t, sql.SQL(RULE_STATES[rule["enabled"]]), sql.Identifier(rule["name"])))
    if objects.table["row_security"]:
        add("enabling row security", sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t))
    if objects.table["force_row_security"]:
        add("forcing row security", sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(t))
    for policy in objects.policies:
        add(f"making the policy {policy['name']}", _policy(t, policy))
    for index in objects.indexes:
        if index["clustered"]:
            add(f"clustering on {index['name']}", sql.SQL("ALTER TABLE {} CLUSTER ON {}").format(
                t, sql.Identifier(index["name"] if index["constraint_name"] is None else index["constraint_name"])))
    for step, statement in _comments(objects, tenant, table):
        add(step, statement)
    for seq in objects.sequences:
        add(f"handing the sequence {seq['name']} over", sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
            sql.Identifier(seq["schema"], seq["name"]), sql.Identifier(tenant_schema(tenant), table, seq["column"])))
    for view in objects.views:
        add(f"replacing the view {view['schema']}.{view['name']}", _view(view))
    return done


def _policy(t: sql.Identifier, policy: Row) -> sql.SQL | sql.Composed:
    """CREATE POLICY from its pg_policy row."""
    roles = sql.SQL(", ").join(sql.SQL("PUBLIC") if r is None else sql.Identifier(r) for r in policy["roles"])
    parts = [sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
        sql.Identifier(policy["name"]), t, sql.SQL("PERMISSIVE" if policy["permissive"] else "RESTRICTIVE"),
        sql.SQL(POLICY_COMMANDS[policy["command"]]), roles)]
    if policy["qual"] is not None:
        parts.append(sql.SQL("USING ({})").format(sql.SQL(policy["qual"])))
    if policy["with_check"] is not None:
        parts.append(sql.SQL("WITH CHECK ({})").format(sql.SQL(policy["with_check"])))
    return sql.SQL(" ").join(parts)


def _view(view: Row) -> sql.SQL | sql.Composed:
    """CREATE OR REPLACE VIEW with the view's definition and options (left out, they would be reset)."""
    options = []
    for option in view["options"] or []:
        name, _, value = option.partition("=")
        if name not in VIEW_OPTIONS:
            raise RunError(ErrorCode.TABLE_OBJECT_NOT_KEPT,
                           f"the view {view['schema']}.{view['name']} has option {name}, which an overwrite does not know")
        options.append(sql.SQL("{} = {}").format(sql.Identifier(name), sql.Literal(value)))
    with_options = sql.SQL("WITH ({}) ").format(sql.SQL(", ").join(options)) if options else sql.SQL("")
    return sql.SQL("CREATE OR REPLACE VIEW {} {}AS {}").format(
        sql.Identifier(view["schema"], view["name"]), with_options, sql.SQL(view["definition"].rstrip().rstrip(";")))


def _comments(objects: _Objects, tenant: str, table: str) -> list[tuple[str, sql.SQL | sql.Composed]]:
    """COMMENT ON each commented object of the table, under its name on the new table."""
    schema, t = tenant_schema(tenant), table_ident(tenant, table)
    found: list[tuple[str, sql.SQL | sql.Composed]] = []

    def on(what: sql.SQL | sql.Composed, text: str) -> None:
        found.append(("copying the comments", sql.SQL("COMMENT ON {} IS {}").format(what, sql.Literal(text))))

    if objects.table["comment"] is not None:
        on(sql.SQL("TABLE {}").format(t), objects.table["comment"])
    for column in objects.column_comments:
        on(sql.SQL("COLUMN {}").format(sql.Identifier(schema, table, column["name"])), column["comment"])
    for index in objects.indexes:
        if index["comment"] is not None:
            name = index["name"] if index["constraint_name"] is None else index["constraint_name"]
            on(sql.SQL("INDEX {}").format(sql.Identifier(schema, name)), index["comment"])
    for kind, rows in (("CONSTRAINT", objects.constraints), ("TRIGGER", objects.triggers),
                       ("RULE", objects.rules), ("POLICY", objects.policies)):
        for row in rows:
            if row["comment"] is not None:
                on(sql.SQL("{} {} ON {}").format(sql.SQL(kind), sql.Identifier(row["name"]), t), row["comment"])
    for stat in objects.statistics:
        if stat["comment"] is not None:
            on(sql.SQL("STATISTICS {}").format(sql.Identifier(stat["schema"], stat["name"])), stat["comment"])
    return found
