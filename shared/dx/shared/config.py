"""Declarative configuration: the YAML of ``dx apply -f FILE``, validated.

Every problem is collected and reported at once, each naming its path in the
file (``modules[2].source.delimiter``). Secrets are ``${DX_SECRET_NAME}``
references, kept as references: their values are read only by the worker that
needs them. ``parse_config`` given the platform's ``TrustedHosts`` also refuses
what a worker would refuse of a connection whose host is written as an address
(``dx.shared.hosts``), and a client database reached without TLS outside them.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dx.shared.cron import EARLIEST, SEARCH_DAYS, Rule, Schedule, console_rule, parse_cron
from dx.shared.errors import ConfigError
from dx.shared.hosts import HOST_NAME, TrustedHosts, literal, literal_problem
from dx.shared.settings import DEFAULT_MIN_CHUNK_BYTES

#: Identifiers of tenants, connections, databases, modules.
ID_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
#: Field names: they become quoted column names.
FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
#: A secret reference: the whole value is ${NAME}.
SECRET_PATTERN = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
#: The prefix of the environment variables holding tenants' secrets: a reference names no other, so
#: that the workers' own settings (DX_DATABASE_URL…) are never sent to a host a tenant chose.
SECRET_PREFIX = "DX_SECRET_"
#: The sslmodes that may send a client database's password and rows in clear: only to a trusted host.
PLAINTEXT_SSLMODES = ("disable", "allow", "prefer")
#: The placeholders of a target path: {date:STRFTIME} (in the module's time zone), {run}, {module}.
PATH_FIELD = re.compile(r"\{(date(?::[^{}]*)?|run|module)\}")
#: Module kinds that write to the client's side.
EXPORT_KINDS = ("displacer", "exporter")
#: XML element and attribute names (namespace prefixes are not part of the name: elements match by local name).
XML_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$"
#: A table of the client's PostgreSQL: `name` or `schema.name`, each part quoted as written.
TABLE_PATTERN = r'^[^."]{1,63}(\.[^."]{1,63})?$'
#: Source options of a file (sftp, local) that a postgres source does not take.
FILE_OPTIONS = ("format", "delimiter", "quote", "header", "columns", "encoding", "compression", "after",
                "archive_dir", "settle_s", "record_element", "action_attribute", "files", "rejected_dir")
#: The default port of each connection type that is a client's database.
DATABASE_PORTS = {"postgres": 5432, "mysql": 3306}
#: Source options of a postgres connection.
QUERY_OPTIONS = ("table", "query", "watermark", "timeout_s")

Id = Annotated[str, Field(pattern=ID_PATTERN)]
#: An e-mail address to notify: one address, no spaces, line breaks or other control characters (which
#: would lose the e-mail, or which the control database cannot store: NUL).
Address = Annotated[str, Field(pattern=r"^[^@\s<>,;\"\x00-\x1f\x7f]+@[^@\s<>,;\"\x00-\x1f\x7f]+"
                                       r"\.[^@\s<>,;\".\x00-\x1f\x7f]+$", max_length=254)]
#: The largest configuration file `dx apply` reads.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: The refusal of a configuration over MAX_CONFIG_BYTES.
TOO_LARGE = (f"the configuration is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; "
             "split it into several files and apply each")
#: The largest chunk a module may ask for (a worker holds a chunk's records in memory).
MAX_CHUNK_BYTES = 1 << 40
#: The longest misfire grace window: a scheduler down longer fires nothing it missed.
MAX_GRACE_S = 31 * 86400
#: The most consecutive failed runs a schedule may wait for before it pauses itself.
MAX_FAILURES = 1000
#: The longest wait for a client's server to connect, and a source query's longest statement timeout.
MAX_CONNECT_TIMEOUT_S = 600.0
MAX_QUERY_TIMEOUT_S = 86400.0
#: The longest settle time of a source file.
MAX_SETTLE_S = 3600.0
#: The largest max_length of a text field (PostgreSQL's text holds at most 1 GB).
MAX_TEXT_LENGTH = 1_000_000_000
#: Characters no path may hold.
PATH_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FieldType = Literal["text", "int", "decimal", "bool", "date", "timestamp", "email"]
ENCODINGS = {
    "utf-8": "utf-8", "utf8": "utf-8", "utf-8-sig": "utf-8",
    "latin-1": "latin-1", "latin1": "latin-1", "iso-8859-1": "latin-1",
    "windows-1252": "cp1252", "cp1252": "cp1252",
}


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _set(model: BaseModel, names: Iterable[str]) -> list[str]:
    """The options among ``names`` set to other than their default (a stored config, dumped with
    its defaults, reads back the same)."""
    fields = type(model).model_fields
    return [n for n in names if getattr(model, n) != fields[n].default]


def _relative_path(value: str) -> str:
    """A path under the connection's root: relative, without ``..`` nor control characters (the
    workers confine every path under the root again, symbolic links included)."""
    if value.startswith("/"):
        raise ValueError(f"{value!r}: give a path relative to the connection's root, without the leading /")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r}: .. is not accepted in a path (every path stays under the connection's root)")
    if PATH_CONTROL.search(value):
        raise ValueError(f"{value!r}: control characters are not accepted in a path")
    return value


#: A folder or file under the connection's root (``archive``, ``in/contacts_*.csv``).
RelativePath = Annotated[str, AfterValidator(_relative_path)]


def _secret(value: str | None) -> str | None:
    if value is None:
        return None
    m = SECRET_PATTERN.match(value)
    if not m:
        raise ValueError(f"secrets must be ${{{SECRET_PREFIX}NAME}} references, never written in clear")
    if not m.group(1).startswith(SECRET_PREFIX):
        raise ValueError(f"${{{m.group(1)}}} is not a tenant secret: a reference must name a variable starting "
                         f"with {SECRET_PREFIX} (for example ${{{SECRET_PREFIX}{m.group(1).removeprefix('DX_')}}}), "
                         "set on every worker; no other variable is ever read")
    return value


def _host(value: str | None) -> str | None:
    if value is not None and not HOST_NAME.match(value) and literal(value) is None:
        raise ValueError("host must be a host name or an IP address (no port, path, user or list)")
    return value


class TenantCfg(Strict):
    id: Id
    notify: list[Address] = []
    #: whether the tenant has DataExchange (sold apart): a disabled tenant's modules do not run.
    enabled: bool = True
    #: the time zone of its modules' schedules that name none (default UTC).
    timezone: TimeZone | None = None


class ConnectionCfg(Strict):
    id: Id
    tenant: Id
    type: Literal["sftp", "local", "postgres", "mysql"]
    #: sftp, local: the folder every path is confined under.
    root: str = ""
    host: str | None = None
    #: default 22 for sftp, 5432 for postgres, 3306 for mysql.
    port: int = Field(22, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    private_key: str | None = None
    passphrase: str | None = None
    host_key: str | None = None
    #: seconds to connect (and, for sftp, to authenticate).
    timeout_s: float = Field(15.0, gt=0, le=MAX_CONNECT_TIMEOUT_S)
    #: postgres, mysql: the client's database and how to use TLS (libpq's sslmode names).
    dbname: str | None = None
    #: verify-full: TLS, the certificate signed by a CA the workers trust and issued for ``host``.
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "verify-full"

    _check_secrets = field_validator("password", "private_key", "passphrase")(_secret)
    _check_host = field_validator("host")(_host)

    @model_validator(mode="before")
    @classmethod
    def _database_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"] in DATABASE_PORTS \
                and "port" not in data:
            return {**data, "port": DATABASE_PORTS[data["type"]]}
        return data

    @property
    def is_database(self) -> bool:
        """Whether this connection is a client's database (postgres, mysql) rather than a folder."""
        return self.type in DATABASE_PORTS

    @model_validator(mode="after")
    def _database_needs(self) -> ConnectionCfg:
        if not self.is_database:
            if _set(self, ("dbname", "sslmode")):
                raise ValueError("dbname and sslmode belong to a postgres or mysql connection")
            return self
        missing = [n for n in ("host", "dbname", "username", "password") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"a {self.type} connection needs {', '.join(missing)} "
                             f"(password: a ${{{SECRET_PREFIX}NAME}} reference)")
        wrong = _set(self, ("root", "private_key", "passphrase", "host_key"))
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: a {self.type} connection does not take these")
        return self

    @model_validator(mode="after")
    def _sftp_needs(self) -> ConnectionCfg:
        if self.is_database:
            return self  # checked by _database_needs
        if self.type == "sftp":
            missing = [n for n in ("host", "username", "host_key") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"an sftp connection needs {', '.join(missing)} "
                                 "(host_key: the line `ssh-keyscan -p PORT HOST` prints, without the host)")
            if self.password is None and self.private_key is None:
                raise ValueError(f"an sftp connection needs password or private_key (a ${{{SECRET_PREFIX}NAME}} "
                                 "reference)")
            if self.host_key is not None and len(self.host_key.split()) < 2:
                raise ValueError("host_key must look like 'ssh-ed25519 AAAA...'")
        if not self.root.startswith("/"):
            raise ValueError("root must be an absolute path" if self.root else f"a {self.type} connection needs root")
        return self


class FieldCfg(Strict):
    type: FieldType = "text"
    required: bool = False
    #: date and timestamp: the strftime format of the values, or a list of the formats accepted (a
    #: value is read with the first that fits; an export writes the first).
    format: str | list[Annotated[str, Field(min_length=1)]] | None = None
    max_length: int | None = Field(None, ge=1, le=MAX_TEXT_LENGTH)
    #: bool: the words read as true and as false, each list replacing the defaults of its side
    #: (compared without case and surrounding spaces).
    true_values: list[Annotated[str, Field(min_length=1)]] | None = None
    false_values: list[Annotated[str, Field(min_length=1)]] | None = None

    @property
    def formats(self) -> list[str]:
        """The accepted formats, in the order they are tried (none: the type's default forms)."""
        return [self.format] if isinstance(self.format, str) else list(self.format or [])

    @property
    def output_format(self) -> str | None:
        """The format an export writes values in."""
        return self.formats[0] if self.formats else None

    @model_validator(mode="after")
    def _options_fit_type(self) -> FieldCfg:
        if self.format is not None and self.type not in ("date", "timestamp"):
            raise ValueError(f"format: only a date or timestamp field takes one, not a {self.type} field")
        if isinstance(self.format, list) and not self.format:
            raise ValueError("format: give at least one format, or leave it out")
        if (self.true_values is not None or self.false_values is not None) and self.type != "bool":
            raise ValueError(f"true_values, false_values: only a bool field takes them, not a {self.type} field")
        if both := {w.strip().lower() for w in self.true_values or []} & \
                {w.strip().lower() for w in self.false_values or []}:
            raise ValueError(f"true_values and false_values share {sorted(both)}: a word must mean one thing")
        return self


class DatabaseCfg(Strict):
    id: Id
    tenant: Id
    primary_key: Annotated[str, Field(pattern=FIELD_PATTERN)]
    fields: dict[Annotated[str, Field(pattern=FIELD_PATTERN)], FieldCfg]

    @field_validator("fields", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({"type": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _key_is_a_field(self) -> DatabaseCfg:
        if self.primary_key not in self.fields:
            raise ValueError(f"primary_key {self.primary_key!r} is not one of the fields")
        return self


def _encoding_name(value: str) -> str:
    if value.lower() not in ENCODINGS:
        raise ValueError(f"unsupported encoding {value!r}; use one of utf-8, latin-1, windows-1252")
    return ENCODINGS[value.lower()]


class SourceCfg(Strict):
    connection: Id
    #: a file source: the file, or a pattern in the file name (empty for a postgres source).
    path: RelativePath = ""
    format: Literal["csv", "xml"] = "csv"
    delimiter: str = Field(",", min_length=1, max_length=1)
    quote: str = Field('"', min_length=1, max_length=1)
    header: bool = True
    columns: list[str] | None = None
    encoding: str = "utf-8"
    compression: Literal["auto", "none", "gzip", "zip"] = "auto"
    after: Literal["archive", "delete", "keep"] = "archive"
    archive_dir: RelativePath = Field("archive", min_length=1)
    #: oldest: one file per run, the oldest-named pending one; all: one run per pending file, in name order.
    files: Literal["oldest", "all"] = "oldest"
    #: where a file that fails its run is moved, with NAME.reason.txt beside it (beside the source).
    rejected_dir: RelativePath = Field("rejected", min_length=1)
    settle_s: float = Field(2.0, ge=0, le=MAX_SETTLE_S)
    #: blank: an empty or all-space cell is empty; unquoted: only an unquoted empty cell is,
    #: `""` is the empty string and text is kept as written (the files the Displacer writes).
    nulls: Literal["blank", "unquoted"] = "blank"
    #: xml: the element holding one record (matched by local name, any namespace).
    record_element: Annotated[str, Field(pattern=XML_NAME_PATTERN)] = "RECORD"
    #: xml: the record element's attribute holding the operation (default: the module's operation_field).
    action_attribute: Annotated[str, Field(pattern=XML_NAME_PATTERN)] | None = None
    #: postgres: a table (`name` or `schema.name`) or a read-only query, and an optional watermark column.
    table: Annotated[str, Field(pattern=TABLE_PATTERN)] | None = None
    query: str | None = Field(None, min_length=1)
    watermark: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    #: postgres: the statement timeout of the query, in seconds.
    timeout_s: float = Field(900.0, gt=0, le=MAX_QUERY_TIMEOUT_S)

    _check_encoding = field_validator("encoding")(_encoding_name)

    @model_validator(mode="after")
    def _columns_without_header(self) -> SourceCfg:
        if not self.header and not self.columns:
            raise ValueError("a source without header needs columns: [names in file order]")
        return self

    @model_validator(mode="after")
    def _file_or_query(self) -> SourceCfg:
        if self.is_query:
            if self.table is not None and self.query is not None:
                raise ValueError("give table or query, not both")
            wrong = _set(self, ("path", *FILE_OPTIONS))
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: a table or query source does not take these")
            return self
        if not self.path:
            raise ValueError("a source needs path (a file) or table/query (a postgres connection)")
        if any(ch in posixpath.dirname(self.path) for ch in "*?["):
            raise ValueError(f"path {self.path!r}: wildcards are allowed in the file name only, not in folders")
        wrong = _set(self, QUERY_OPTIONS)
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: only a table or query source (postgres connection) takes these")
        return self

    @model_validator(mode="after")
    def _format_options(self) -> SourceCfg:
        other = ("delimiter", "quote", "header", "columns", "encoding") if self.format == "xml" \
            else ("record_element", "action_attribute")
        wrong = _set(self, other)
        if wrong:
            detail = " (the XML declaration names the encoding)" if "encoding" in wrong else ""
            raise ValueError(f"{', '.join(wrong)}: not an option of format {self.format}{detail}")
        return self

    @property
    def is_query(self) -> bool:
        """Whether this source is a table or query of the client's PostgreSQL."""
        return self.table is not None or self.query is not None


class TargetCfg(Strict):
    """Where and how a Displacer or Exporter writes its file."""

    connection: Id
    path: str = Field(min_length=1)
    format: Literal["csv", "xml"] = "csv"
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    header: bool = True
    compression: Literal["gzip", "none"] = "none"
    manifest: bool = False
    spreadsheet: bool = False
    record_element: Annotated[str, Field(pattern=FIELD_PATTERN)] = "RECORD"

    _check_encoding = field_validator("encoding")(_encoding_name)

    @field_validator("path")
    @classmethod
    def _template(cls, value: str) -> str:
        rest = PATH_FIELD.sub("", value)
        if "{" in rest or "}" in rest:
            raise ValueError("a path may hold only {date:FORMAT}, {run} and {module} placeholders")
        if value.endswith("/"):
            raise ValueError("path must name a file, not a folder")
        _relative_path(value)
        _relative_path(render_sample(value))  # what a date format makes must stay under the root too
        return value


def render_sample(template: str) -> str:
    """A target path with its placeholders filled with sample values (a date, run 1, module ``m``)."""
    sample = datetime(2026, 12, 31, 23, 59, 59)  # noqa: DTZ001 (a wall time: only its digits matter)

    def value(m: re.Match[str]) -> str:
        name, _, fmt = m.group(1).partition(":")
        return sample.strftime(fmt or "%Y-%m-%d") if name == "date" else "1" if name == "run" else "m"

    return PATH_FIELD.sub(value, template)


class FilterCfg(Strict):
    """One condition of a Displacer's filter; the conditions of a list must all hold."""

    field: Annotated[str, Field(pattern=FIELD_PATTERN)]
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "null", "not_null"] = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> FilterCfg:
        if self.op in ("null", "not_null"):
            if self.value is not None:
                raise ValueError(f"op {self.op} takes no value")
        elif self.op == "in":
            if not isinstance(self.value, list) or not self.value:
                raise ValueError("op in needs a non-empty list as value")
        elif self.value is None or isinstance(self.value, list | dict):
            raise ValueError(f"op {self.op} needs one value")
        return self

def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Rome") from None
    return value


#: An IANA time zone name, checked against the zone database.
TimeZone = Annotated[str, AfterValidator(_time_zone)]


def _cron(value: str) -> str:
    parse_cron(value)
    return value


def _time_of_day(value: str) -> str:
    console_rule([value])
    return value


def _month(value: int | str) -> int | str:
    console_rule(["00:00"], months=[value])
    return value


def _day(value: object) -> object:
    """A date as YAML writes one (``2026-12-01``) or as text; a number is not a date."""
    if isinstance(value, bool | int | float):
        raise ValueError("expected a date as YYYY-MM-DD, not a number")
    return value


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
#: A schedule's start or end date.
Day = Annotated[date, BeforeValidator(_day)]


class ScheduleCfg(Strict):
    """When a module fires: cron expressions or the console form, in one time zone."""

    cron: list[Annotated[str, AfterValidator(_cron)]] | None = None
    times: list[Annotated[str, AfterValidator(_time_of_day)]] | None = None
    weekdays: list[Weekday] = []
    months: list[Annotated[int | str, AfterValidator(_month)]] = []
    #: unset: the tenant's timezone (read when the schedule is compiled), else UTC.
    timezone: TimeZone | None = None
    start: Day | None = None
    end: Day | None = None
    misfire_grace_s: float = Field(300.0, ge=0, le=MAX_GRACE_S)
    overlap: Literal["forbid", "queue", "allow"] = "forbid"
    max_failures: int | None = Field(None, ge=1, le=MAX_FAILURES)

    @model_validator(mode="after")
    def _one_form(self) -> ScheduleCfg:
        if (self.cron is None) == (self.times is None):
            raise ValueError("give either cron: [expressions] or times: [\"HH:MM\"] (with weekdays, months)")
        if self.cron is not None and (self.weekdays or self.months):
            raise ValueError("weekdays and months go with times:, not with cron: (put them in the expression)")
        if self.cron == [] or self.times == []:
            raise ValueError("the schedule lists no cron expression or time")
        if self.start and self.end and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        compiled = self.compile()
        if not compiled.rules_can_fire():
            raise ValueError("this schedule never fires (no date matches its days and months)")
        if (self.start or self.end) and next(compiled.fires(self._window_start()), None) is None:
            window = f"from {self.start}" if self.end is None else \
                f"between {self.start or 'its start'} and {self.end}"
            raise ValueError(f"this schedule never fires {window} (no date of that window matches its days "
                             "and months, or it lies at the calendar's ends, years 1 and 9999)")
        return self

    def _window_start(self) -> datetime:
        """An instant just before the first day a fire is looked for: ``start``, else long before ``end``."""
        earliest = EARLIEST.date() + timedelta(days=SEARCH_DAYS)
        first = self.start or (self.end - timedelta(days=SEARCH_DAYS) if self.end and self.end > earliest
                               else EARLIEST.date())
        if first <= EARLIEST.date():
            return EARLIEST
        return datetime.combine(first - timedelta(days=1), time.max, tzinfo=ZoneInfo(self.zone()))

    def zone(self, tenant_timezone: str | None = None) -> str:
        """The time zone its fire times are read in: its own, else its tenant's, else UTC."""
        return self.timezone or tenant_timezone or "UTC"

    def compile(self, tenant_timezone: str | None = None) -> Schedule:
        """The schedule as fire-time rules (dx.shared.cron), in ``zone(tenant_timezone)``."""
        rules: tuple[Rule, ...]
        if self.cron is not None:
            rules = tuple(parse_cron(c) for c in self.cron)
        else:
            rules = (console_rule(self.times or [], self.weekdays, self.months),)
        return Schedule(rules, ZoneInfo(self.zone(tenant_timezone)), self.start, self.end)


class ModuleCfg(Strict):
    id: Id
    tenant: Id
    kind: Literal["importer", "updater", "displacer", "exporter"]
    database: Id
    mode: Literal["overwrite", "append", "upsert"] | None = None
    source: SourceCfg | None = None
    max_error_ratio: float = Field(0.1, ge=0, le=1)
    allow_empty: bool = False
    #: updater: the source column holding each record's operation (I, U, D).
    operation_field: str = Field("operation", min_length=1)
    #: updater: what a U on a key that is not there does: fail, or insert the record.
    update_missing: Literal["fail", "insert"] = "fail"
    #: what a source column that maps to no field does: nothing, a warning UNKNOWN_COLUMN, or fail the run.
    unknown_columns: Literal["ignore", "warn", "fail"] = "warn"
    #: updater U and importer upsert: an empty cell sets the field empty (null) or leaves it as it is (keep).
    empty_on_update: Literal["null", "keep"] = "null"
    #: bytes of source per chunk for this module (an overwrite's: of parsed records; default: DX_CHUNK_BYTES);
    #: at least DX_MIN_CHUNK_BYTES (checked by ``parse_config``).
    chunk_bytes: int | None = Field(None, ge=1, le=MAX_CHUNK_BYTES)
    schedule: ScheduleCfg | None = None
    notify: list[Address] = []
    #: which runs' report e-mails go out: every run's, those with errors (failed, or completed with failed
    #: records, or timed out), or failed runs' only.
    notify_on: Literal["always", "errors", "failures"] = "always"
    #: true or false sets it; left out, a re-apply keeps what `dx pause`/`resume` or an auto-pause set.
    paused: bool | None = None
    timezone: TimeZone = "UTC"
    target: TargetCfg | None = None
    fields: list[Annotated[str, Field(pattern=FIELD_PATTERN)]] | None = None
    filter: list[FilterCfg] | None = None
    events: Literal["raw", "summary"] | None = None

    @model_validator(mode="after")
    def _export_needs(self) -> ModuleCfg:
        exporting = self.kind in EXPORT_KINDS
        if not exporting:
            given = [n for n in ("target", "fields", "filter", "events") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only a displacer or exporter takes these")
            return self
        if self.target is None:
            raise ValueError(f"kind {self.kind} needs a target")
        if self.source is not None or self.mode is not None:
            raise ValueError(f"kind {self.kind} takes a target, not a source or mode")
        if self.kind == "exporter" and (self.fields is not None or self.filter is not None):
            raise ValueError("an exporter exports events: fields and filter belong to a displacer")
        if self.kind == "displacer" and self.events is not None:
            raise ValueError("events belongs to an exporter")
        return self

    @model_validator(mode="after")
    def _source_fits_kind(self) -> ModuleCfg:
        if self.source is None:
            return self
        if self.source.action_attribute is not None and self.kind != "updater":
            raise ValueError("source.action_attribute: only an updater reads each record's operation")
        if self.source.watermark is not None and self.mode == "overwrite":
            raise ValueError("source.watermark: an overwrite replaces the database with the whole source; "
                             "use upsert or append with a watermark")
        return self

    @model_validator(mode="after")
    def _kind_needs(self) -> ModuleCfg:
        if self.kind in EXPORT_KINDS:
            return self  # checked by _export_needs
        if self.kind == "importer" and self.mode is None:
            raise ValueError("an importer needs mode: overwrite, append or upsert")
        if self.kind == "updater" and self.mode is not None:
            raise ValueError("an updater takes no mode: each record's operation field says what to do")
        if self.source is None:
            raise ValueError(f"an {self.kind} needs a source")
        if self.empty_on_update == "keep" and self.kind == "importer" and self.mode != "upsert":
            raise ValueError("empty_on_update: only an updater or an upsert importer updates records")
        return self


class Config(Strict):
    tenants: list[TenantCfg] = []
    connections: list[ConnectionCfg] = []
    databases: list[DatabaseCfg] = []
    modules: list[ModuleCfg] = []


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass(frozen=True)
class Known:
    """What is already applied: references may point at it."""

    tenants: frozenset[str] = frozenset()
    connections: tuple[tuple[str, str], ...] = ()  # (id, tenant)
    connection_types: tuple[tuple[str, str], ...] = ()  # (id, type)
    databases: frozenset[tuple[str, str]] = frozenset()  # (tenant, id)


def _cross_checks(cfg: Config, known: Known) -> list[str]:
    """References between sections: ids unique, tenants match, nothing dangling."""
    problems: list[str] = []
    tenants = known.tenants | {t.id for t in cfg.tenants}

    def unique(section: str, ids: list[str]) -> None:
        seen: set[str] = set()
        for i, ident in enumerate(ids):
            if ident in seen:
                problems.append(f"{section}[{i}].id: {ident!r} is defined twice")
            seen.add(ident)

    unique("tenants", [t.id for t in cfg.tenants])
    unique("connections", [c.id for c in cfg.connections])
    unique("databases", [f"{d.tenant}/{d.id}" for d in cfg.databases])
    unique("modules", [m.id for m in cfg.modules])
    owners = [("connections", [c.tenant for c in cfg.connections]), ("databases", [d.tenant for d in cfg.databases]),
              ("modules", [m.tenant for m in cfg.modules])]
    for section, owner_ids in owners:
        for i, owner in enumerate(owner_ids):
            if owner not in tenants:
                problems.append(f"{section}[{i}].tenant: unknown tenant {owner!r}")
    connections = dict(known.connections) | {c.id: c.tenant for c in cfg.connections}
    databases = known.databases | {(d.tenant, d.id) for d in cfg.databases}
    for i, m in enumerate(cfg.modules):
        if (m.tenant, m.database) not in databases:
            problems.append(f"modules[{i}].database: no database {m.database!r} for tenant {m.tenant!r}")
        for side, ref in (("source", m.source), ("target", m.target)):
            if ref is None:
                continue
            conn_owner = connections.get(ref.connection)
            if conn_owner is None:
                problems.append(f"modules[{i}].{side}.connection: unknown connection {ref.connection!r}")
            elif conn_owner != m.tenant:
                problems.append(f"modules[{i}].{side}.connection: {ref.connection!r} belongs to "
                                f"tenant {conn_owner!r}, not {m.tenant!r}")
        problems += _field_checks(i, m, [d for d in cfg.databases if (d.tenant, d.id) == (m.tenant, m.database)])
    types = dict(known.connection_types) | {c.id: c.type for c in cfg.connections}
    problems += [p for i, m in enumerate(cfg.modules) for p in _source_kind_checks(i, m, types)]
    return problems


def _source_kind_checks(i: int, m: ModuleCfg, types: dict[str, str]) -> list[str]:
    """A database connection (postgres, mysql) reads a table or query; the other connections read files."""
    if m.target is not None and types.get(m.target.connection) in DATABASE_PORTS:
        return [f"modules[{i}].target.connection: {m.target.connection!r} is a {types[m.target.connection]} "
                "connection; targets are files (sftp or local)"]
    src = m.source
    if src is None or src.connection not in types:
        return []
    kind = types[src.connection]
    if kind in DATABASE_PORTS and not src.is_query:
        return [f"modules[{i}].source: connection {src.connection!r} is a {kind} connection: "
                "give table or query instead of path"]
    if kind not in DATABASE_PORTS and src.is_query:
        return [f"modules[{i}].source: table and query need a postgres or mysql connection; "
                f"{src.connection!r} is {kind}"]
    return []


def _field_checks(i: int, m: ModuleCfg, dbs: list[DatabaseCfg]) -> list[str]:
    """A displacer's fields and filter name fields of its database (when the file declares it)."""
    if not dbs:
        return []
    names = dbs[0].fields
    problems = [f"modules[{i}].fields[{j}]: {name!r} is not a field of database {m.database!r}"
                for j, name in enumerate(m.fields or []) if name not in names]
    problems += [f"modules[{i}].filter[{j}].field: {f.field!r} is not a field of database {m.database!r}"
                 for j, f in enumerate(m.filter or []) if f.field not in names]
    return problems


#: Each section of a config file and the model of its items.
SECTIONS: dict[str, type[Strict]] = {"tenants": TenantCfg, "connections": ConnectionCfg, "databases": DatabaseCfg,
                                     "modules": ModuleCfg}


def _partial_cross_checks(raw: dict[str, Any], known: Known) -> list[str]:
    """The reference checks over the items that are valid on their own, so that one schema
    mistake does not hide the other problems. An invalid item still counts as defined
    (by its raw id): a reference to it is not reported as dangling."""
    kept: dict[str, list[Any]] = {}
    positions: dict[str, list[int]] = {}
    ids: dict[str, list[dict[str, Any]]] = {}
    for section, model in SECTIONS.items():
        items = raw.get(section)
        kept[section], positions[section], ids[section] = [], [], []
        for i, item in enumerate(items if isinstance(items, list) else []):
            try:
                kept[section].append(model.model_validate(item))
                positions[section].append(i)
            except ValidationError:
                if isinstance(item, dict):
                    ids[section].append({k: v for k, v in item.items() if isinstance(v, str)})
    try:
        partial = Config.model_validate({k: [m.model_dump(mode="json") for m in v] for k, v in kept.items()})
    except ValidationError:
        return []
    known = Known(
        tenants=known.tenants | {t["id"] for t in ids["tenants"] if "id" in t},
        connections=known.connections + tuple((c["id"], c.get("tenant", "")) for c in ids["connections"] if "id" in c),
        connection_types=known.connection_types + tuple(
            (c["id"], c["type"]) for c in ids["connections"] if "id" in c and "type" in c),
        databases=known.databases | {(d.get("tenant", ""), d["id"]) for d in ids["databases"] if "id" in d})

    def renumber(problem: str) -> str:  # an index among the valid items → its index in the file
        section, _, rest = problem.partition("[")
        number, _, tail = rest.partition("]")
        return f"{section}[{positions[section][int(number)]}]{tail}" if section in positions else problem

    return [renumber(p) for p in _cross_checks(partial, known)]


class _StrictLoader(yaml.SafeLoader):
    """YAML without aliases (a few hundred bytes of them expand to gigabytes) and without a key given
    twice in one mapping (the last one would win in silence)."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted: write the value out", self.peek_event().start_mark)
        return super().compose_node(parent, index)  # type: ignore[arg-type]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool | date | None):  # a list or mapping as a key
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a name, not a list or mapping", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in this mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> date | datetime:
        """A date or time as PyYAML reads it, one that does not exist (2026-02-30) being a YAML error."""
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid date or time ({exc})", node.start_mark) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _StrictLoader.construct_yaml_timestamp)


def _unstorable(value: object, loc: tuple[int | str, ...] = ()) -> Iterator[str]:
    """Problems with text the control database cannot store: NUL characters and lone surrogates
    (which YAML's escapes ``"\\0"`` and ``"\\ud800"`` make), in keys and values alike."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _unstorable(key, loc)
            yield from _unstorable(item, (*loc, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unstorable(item, (*loc, i))
    elif isinstance(value, str):
        if "\x00" in value:
            yield f"{_path(loc)}: NUL characters (\\0) are not accepted"
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                yield f"{_path(loc)}: not valid Unicode text (a lone surrogate such as \\ud800)"


def _chunk_floor(cfg: Config, min_chunk_bytes: int) -> list[str]:
    return [f"modules[{i}].chunk_bytes: {m.chunk_bytes} is below the smallest chunk the workers take, "
            f"{min_chunk_bytes} bytes (DX_MIN_CHUNK_BYTES); leave it out to use DX_CHUNK_BYTES"
            for i, m in enumerate(cfg.modules) if m.chunk_bytes is not None and m.chunk_bytes < min_chunk_bytes]


def root_problem(root: str, allowed: Sequence[Path]) -> str | None:
    """Why a tenant may not use ``root`` (links resolved): it is not inside one of the ``allowed`` folders."""
    if any(Path(os.path.realpath(root)).is_relative_to(a) for a in allowed):
        return None
    listed = ", ".join(str(a) for a in allowed) or "unset: no folder"
    return (f"{root} is not inside a folder the platform lets tenants use (DX_LOCAL_ROOTS: {listed}); "
            "the platform's operator lists it, or use an sftp connection")


def _platform_checks(cfg: Config, trusted: TrustedHosts, local_roots: Sequence[Path]) -> list[str]:
    """What the platform forbids a tenant's connection: a host written as an internal address it does
    not trust, a client database reached without TLS outside the hosts it trusts, a local folder outside
    the ones it lets tenants use."""
    problems = []
    for i, c in enumerate(cfg.connections):
        if c.type == "local" and c.root and (problem := root_problem(c.root, local_roots)) is not None:
            problems.append(f"connections[{i}].root: {problem}")
        if c.host is None:
            continue
        if (problem := literal_problem(c.host, trusted)) is not None:
            problems.append(f"connections[{i}].host: {problem}")
        if c.is_database and c.sslmode in PLAINTEXT_SSLMODES and not trusted.trusts_host(c.host):
            problems.append(f"connections[{i}].sslmode: {c.sslmode} may send the password and the rows in clear, "
                            f"which only a host the platform trusts may receive; leave sslmode out (verify-full), "
                            "or use require (TLS, any certificate) or verify-ca; or the platform's operator "
                            f"lists {c.host} in DX_TRUSTED_HOSTS")
    return problems


def read_config_file(path: Path) -> str:
    """A configuration file's text, read no further than the size cap (a huge file is refused unread)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: {TOO_LARGE}"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None


def parse_config(text: str, known: Known | None = None, trusted: TrustedHosts | None = None, *,
                 min_chunk_bytes: int = DEFAULT_MIN_CHUNK_BYTES, local_roots: Sequence[Path] = ()) -> Config:
    """Parse and validate YAML text; ConfigError lists every problem with its path. ``trusted``: the
    platform's trusted hosts, and ``local_roots`` its folders for local connections (DX_LOCAL_ROOTS), to
    refuse what its workers would refuse of a connection (not checked without ``trusted``). A module's
    ``chunk_bytes`` must be at least ``min_chunk_bytes`` (DX_MIN_CHUNK_BYTES)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigError([TOO_LARGE])
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader, stricter
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from exc
    except RecursionError:
        raise ConfigError(["not valid YAML: lists or mappings nested too deeply"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping with tenants, connections, databases, modules"])
    unstorable = list(_unstorable(raw))
    if unstorable:
        raise ConfigError(unstorable)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key (check its spelling)"
            problems.append(f"{_path(err['loc'])}: {message}")
        raise ConfigError(problems + _partial_cross_checks(raw, known or Known())) from exc
    problems = _cross_checks(cfg, known or Known()) + _chunk_floor(cfg, min_chunk_bytes)
    if trusted is not None:
        problems += _platform_checks(cfg, trusted, local_roots)
    if problems:
        raise ConfigError(problems)
    return cfg
