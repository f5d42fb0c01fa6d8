"""One tree of errors and one list of stable error codes.

The tree is branched by what the caller should do (after the Singer SDK):

- ``DxError``: the root.
  - ``RetriableError``: try again later (a service restarting, a lock).
  - ``RunError``: the run fails with a run-level ``ErrorCode``.
  - ``ConfigError``: the configuration is wrong; carries every problem at once.

Record-level problems are not exceptions: they are rows of the
failed-operations report, each carrying a record-level ``ErrorCode``.
``docs/error-codes.md`` is generated from ``ErrorCode`` (``dx docs``).
"""

from __future__ import annotations

import errno
from enum import StrEnum


class Level(StrEnum):
    """Whether a code fails the whole run or one record."""

    RUN = "run"
    RECORD = "record"
    REQUEST = "request"
    API = "api"
    WARNING = "warning"


class ErrorCode(StrEnum):
    """Stable error codes: the value is the code users see, never renamed."""

    meaning: str
    level: Level

    def __new__(cls, code: str, level: Level, meaning: str) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.level = level
        member.meaning = meaning
        return member

    # run-level: the run fails and the database keeps its previous content
    SOURCE_NOT_FOUND = ("SOURCE_NOT_FOUND", Level.RUN,
                        "No source file matches the configured path or pattern.")
    SOURCE_NOT_READY = ("SOURCE_NOT_READY", Level.RUN,
                        "The source file is still being written (its size or time changed while we looked): "
                        "the run is skipped, not failed, and the next run takes the file.")
    SOURCE_UNREADABLE = ("SOURCE_UNREADABLE", Level.RUN,
                         "The source file could not be read or decompressed.")
    SOURCE_UNDECODABLE = ("SOURCE_UNDECODABLE", Level.RUN,
                          "The source file is not in the configured encoding.")
    SOURCE_UNSAFE = ("SOURCE_UNSAFE", Level.RUN,
                     "The XML source declares entities or an external DTD: refused, never expanded nor fetched "
                     "(protection against entity bombs and external-entity reads).")
    SOURCE_QUERY_FAILED = ("SOURCE_QUERY_FAILED", Level.RUN,
                           "The table or query of the client's database (PostgreSQL, MySQL, MariaDB) could not "
                           "be read: bad SQL, a query holding more than one statement, a missing table, column "
                           "or privilege, a write refused by the read-only transaction, the statement timeout, "
                           "or (MySQL) a watermark column of another type than a number, date or time, or a row "
                           "longer than max_allowed_packet. The message names the server's error by its code "
                           "(SQLSTATE, MySQL error number), never by the server's own text.")
    MALFORMED_HEADER = ("MALFORMED_HEADER", Level.RUN,
                        "The header line is missing, empty or names a column twice, or two columns differ only "
                        "by case and so map to one field (XML: the document holds no element of the configured "
                        "record_element).")
    UNKNOWN_COLUMN = ("UNKNOWN_COLUMN", Level.RUN,
                      "The source has columns that map to no field of the database (a misspelled name?). "
                      "With unknown_columns: fail the run fails before anything is written; with warn (the "
                      "default) the run goes on and carries this code as a warning naming the columns.")
    MISSING_REQUIRED_COLUMN = ("MISSING_REQUIRED_COLUMN", Level.RUN,
                               "The source has no column for the primary key or a required field.")
    EMPTY_SOURCE = ("EMPTY_SOURCE", Level.RUN,
                    "An overwrite found no valid record; the old content is kept (allow_empty: true permits it). "
                    "In any mode, a file of 0 bytes where a header or an XML document is expected (an upload "
                    "cut short), whatever allow_empty says.")
    ERROR_RATIO_EXCEEDED = ("ERROR_RATIO_EXCEEDED", Level.RUN,
                            "More records were rejected than the module's max_error_ratio allows.")
    CONSTRAINT_VIOLATED = ("CONSTRAINT_VIOLATED", Level.RUN,
                           "An overwrite's new content breaks a rule the client added to the contact table (a "
                           "CHECK, UNIQUE or NOT NULL constraint, a foreign key it holds, or another table's "
                           "foreign key referencing it); the message names it. The table keeps its content and "
                           "its objects.")
    TABLE_OBJECT_NOT_KEPT = ("TABLE_OBJECT_NOT_KEPT", Level.RUN,
                             "An overwrite could not keep an object of the contact table: a materialized view, a "
                             "function or another table's column, policy or rule using it, or one the workers' "
                             "role may not make again (a view owned by another role); the message names it. "
                             "The table keeps its content and its objects.")
    TRANSFER_FAILED = ("TRANSFER_FAILED", Level.RUN,
                       "Listing or downloading the source broke off on every try (the connection dropped, the "
                       "file came short): the stage tries again after a few seconds, 3 times, before the run "
                       "fails. The file stays where it is and the next run takes it again.")
    CONNECTION_FAILED = ("CONNECTION_FAILED", Level.RUN,
                         "The client's server could not be reached, or refused the connection before login, on "
                         "every try: the stage tries again after a few seconds, 3 to 5 times (a server restarting), "
                         "before the run fails.")
    HOST_NOT_ALLOWED = ("HOST_NOT_ALLOWED", Level.RUN,
                        "The connection's host is, or resolves to, an address tenant connections may not "
                        "reach: loopback, private (RFC 1918, IPv6 ULA), link-local (the cloud metadata "
                        "service among them), shared (CGNAT 100.64.0.0/10), unspecified, multicast or "
                        "reserved. Nothing was sent to it. If it really is the client's server, the platform's "
                        "operator lists it in DX_TRUSTED_HOSTS.")
    TLS_REQUIRED = ("TLS_REQUIRED", Level.RUN,
                    "The client's database could not be reached over TLS as the connection's sslmode requires: "
                    "the server offers no TLS, or its certificate did not verify (verify-full, the default: "
                    "signed by a CA the workers trust and issued for the host; require accepts any "
                    "certificate); or the sslmode (disable, allow, prefer) may send the password in clear to a "
                    "host the platform does not trust (DX_TRUSTED_HOSTS). Nothing was sent in clear.")
    AUTHENTICATION_FAILED = ("AUTHENTICATION_FAILED", Level.RUN,
                             "The client's server refused the configured credentials.")
    HOST_KEY_UNKNOWN = ("HOST_KEY_UNKNOWN", Level.RUN,
                        "The SFTP server offered a host key of a type that is not pinned in the connection.")
    HOST_KEY_MISMATCH = ("HOST_KEY_MISMATCH", Level.RUN,
                         "The SFTP server's host key differs from the pinned one (possible interception).")
    ROOT_NOT_ALLOWED = ("ROOT_NOT_ALLOWED", Level.RUN,
                        "A local connection's root is not inside a folder the platform lets tenants use "
                        "(DX_LOCAL_ROOTS on the workers and at dx apply; unset, none): nothing was read or "
                        "written. The platform's operator lists the folder, or the tenant uses sftp.")
    PATH_OUTSIDE_ROOT = ("PATH_OUTSIDE_ROOT", Level.RUN,
                         "A configured path leaves the connection's root.")
    SECRET_MISSING = ("SECRET_MISSING", Level.RUN,
                      "A ${DX_SECRET_NAME} secret reference names a variable that is not set on the worker, "
                      "or (a connection applied before the prefix was required) a variable whose name does not "
                      "start with DX_SECRET_, which is never read: apply the connection again.")
    CONFIG_INVALID = ("CONFIG_INVALID", Level.RUN,
                      "The module's configuration no longer matches its database or connection.")
    TARGET_WRITE_FAILED = ("TARGET_WRITE_FAILED", Level.RUN,
                           "The export file could not be written to the client's side; nothing was left under "
                           "its final name and an Exporter's watermark did not move.")
    TARGET_UNENCODABLE = ("TARGET_UNENCODABLE", Level.RUN,
                          "A value has no representation in the target's encoding (choose utf-8).")
    DATA_REFUSED = ("DATA_REFUSED", Level.RUN,
                    "The database refused a chunk's records for a reason that is the data's own (a rule the "
                    "client added to the contact table, a value its column cannot hold) but that single records "
                    "do not explain, or that too many of them share (more than a chunk tells apart one by one: "
                    "the message gives the database's reason and how many were found). Retrying cannot help, so "
                    "the run failed at once.")
    INTERNAL_ERROR = ("INTERNAL_ERROR", Level.RUN,
                      "A worker failed unexpectedly after its retries; the log of the run says why.")
    STAGING_FULL = ("STAGING_FULL", Level.RUN,
                    "The workers' staging space (DX_STAGING_DIR, or DX_STAGING_URL's storage) ran out while the "
                    "run staged its file or chunks, on every try. An overwrite kept the old table; other modes "
                    "keep what their committed chunks applied. Free space or give the workers a larger staging "
                    "volume, then run the module again.")
    RUN_TIMED_OUT = ("RUN_TIMED_OUT", Level.RUN,
                     "The run did not end in time: it made no progress although the scheduler sent its "
                     "missing stage again DX_MAX_REDRIVES times, or it ran longer than DX_RUN_TIMEOUT_S. "
                     "Its status is timed_out; its file stays where it was (not archived, deleted or "
                     "rejected) and an overwrite kept the old table. Check that workers run and reach "
                     "RabbitMQ, PostgreSQL and the client's server (the scheduler's and workers' logs name "
                     "the run), then run the module again.")

    # warnings: the run goes on and lists the code among its warnings
    SOURCE_NOT_ARCHIVED = ("SOURCE_NOT_ARCHIVED", Level.WARNING,
                           "After a run that imported it, the source file could not be archived (after: "
                           "archive) or deleted (after: delete): the server refused the move or removal (a "
                           "permission, a missing archive_dir, a full disk), or the file changed since. It stays "
                           "where it is and is not imported again (the ledger has it); the message says why.")

    # request-level: a run request or a scheduled fire does no work
    OVERLAP_FORBIDDEN = ("OVERLAP_FORBIDDEN", Level.REQUEST,
                         "A scheduled fire found the module's previous run still going; with overlap: forbid "
                         "it is recorded as a skipped run.")
    TENANT_DISABLED = ("TENANT_DISABLED", Level.REQUEST,
                       "The tenant's DataExchange is not enabled (tenants[].enabled: false): its modules do "
                       "not run, neither on schedule nor on demand.")
    REQUEST_MALFORMED = ("REQUEST_MALFORMED", Level.REQUEST,
                         "An AMQP run request is not a JSON object with ids tenant and module (and optionally "
                         "requested_by: text without control characters), or its message_id is not such text; it "
                         "is dead-lettered.")
    UNKNOWN_MODULE = ("UNKNOWN_MODULE", Level.REQUEST,
                      "A run request names a module that does not exist or belongs to another tenant; "
                      "it is dead-lettered.")

    # HTTP API: the request is refused, nothing changes (the body is {"error": {"code", "message"}})
    UNAUTHENTICATED = ("UNAUTHENTICATED", Level.API,
                       "401: the request has no bearer token or console session, or one that is unknown, "
                       "revoked or expired (`dx token create --tenant T` makes a token; the console signs in).")
    SIGN_IN_FAILED = ("SIGN_IN_FAILED", Level.API,
                      "401: the console's username or password is wrong, or the user or its tenant is disabled.")
    TOO_MANY_ATTEMPTS = ("TOO_MANY_ATTEMPTS", Level.API,
                         "429: too many failed sign-ins for this username or from this address; wait 15 minutes "
                         "(Retry-After says how long) or ask an operator to check the account.")
    CHECK_TIMED_OUT = ("CHECK_TIMED_OUT", Level.API,
                       "504: no worker answered the console's Test connection or Preview in time; check that "
                       "workers run (`dx worker`) and ask again.")
    FORBIDDEN = ("FORBIDDEN", Level.API,
                 "403: the console user's role may read but not change (viewer); an operator may.")
    CSRF_FAILED = ("CSRF_FAILED", Level.API,
                   "403: a change sent with the console's session cookie lacks its X-CSRF-Token header, or sends "
                   "another; reload the console.")
    NOT_FOUND = ("NOT_FOUND", Level.API,
                 "404: no such path, or no such module or run for the token's tenant (another tenant's "
                 "look the same as missing ones).")
    METHOD_NOT_ALLOWED = ("METHOD_NOT_ALLOWED", Level.API, "405: the path exists but not with this method.")
    INVALID_REQUEST = ("INVALID_REQUEST", Level.API,
                       "422: a parameter or the JSON body is not valid; `details` says which and why.")
    REQUEST_TOO_LARGE = ("REQUEST_TOO_LARGE", Level.API,
                         "413: the request body is larger than the API reads (64 KiB); it was not read.")
    REQUEST_ID_REUSED = ("REQUEST_ID_REUSED", Level.API,
                         "409: a run-now's request_id was already used by the tenant for another module (an "
                         "AMQP request whose message_id was is dead-lettered with this code).")
    SERVICE_UNAVAILABLE = ("SERVICE_UNAVAILABLE", Level.API,
                           "503: PostgreSQL or RabbitMQ does not answer; try again later.")
    SERVER_ERROR = ("SERVER_ERROR", Level.API, "500: the API failed unexpectedly; its log says why.")

    # record-level: one record is rejected, the others are applied
    MALFORMED_RECORD = ("MALFORMED_RECORD", Level.RECORD,
                        "The record has a different number of fields than the header (XML: it gives a field "
                        "twice, or a field holds elements).")
    KEY_MISSING = ("KEY_MISSING", Level.RECORD, "The primary-key field is empty.")
    REQUIRED_FIELD_MISSING = ("REQUIRED_FIELD_MISSING", Level.RECORD, "A required field is empty.")
    INVALID_VALUE = ("INVALID_VALUE", Level.RECORD,
                     "A value does not parse as its field's type, or holds a character no field may hold: a NUL "
                     "byte (PostgreSQL cannot store it), or in an e-mail address a control or invisible formatting "
                     "character (a byte-order mark U+FEFF, a zero-width space). A NUL is shown as U+FFFD in the "
                     "report.")
    VALUE_TOO_LONG = ("VALUE_TOO_LONG", Level.RECORD, "A text value is longer than its field's max_length.")
    DUPLICATE_KEY = ("DUPLICATE_KEY", Level.RECORD,
                     "The key appears earlier in the same source; the first occurrence was applied.")
    KEY_EXISTS = ("KEY_EXISTS", Level.RECORD, "The key already exists in the database; the record was not added.")
    KEY_NOT_FOUND = ("KEY_NOT_FOUND", Level.RECORD,
                     "An update or delete names a key that is not in the database (at that point of the source).")
    BAD_OPERATION = ("BAD_OPERATION", Level.RECORD,
                     "The record's operation is not I (insert), U (update) or D (delete).")
    RECORD_REFUSED = ("RECORD_REFUSED", Level.RECORD,
                      "The database refused the record: it breaks a rule the client added to the contact table (a "
                      "CHECK, NOT NULL or UNIQUE constraint, a foreign key) or holds a value the column cannot "
                      "store (longer than a varchar(n), out of range); the message gives the database's reason. "
                      "The chunk's other records are applied.")
    RECORD_TOO_LARGE = ("RECORD_TOO_LARGE", Level.RECORD,
                        "The CSV record is longer than 16 MiB (its bytes in UTF-8), the most one record may hold; "
                        "its first characters are quoted.")


#: SQLSTATE classes of the database errors that the same data raises every time: 22 (data exception: a
#: value a column cannot hold) and 23 (integrity constraint violation: CHECK, NOT NULL, UNIQUE, foreign key).
DATA_SQLSTATE_CLASSES = ("22", "23")


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error that the data written raises every time (never retried)."""
    sqlstate = getattr(exc, "sqlstate", None)  # psycopg's errors carry it; not imported here
    return isinstance(sqlstate, str) and sqlstate[:2] in DATA_SQLSTATE_CLASSES


#: Each code's meaning, by code: the run page, the e-mail and the error-code page show it.
MEANINGS = {c.value: c.meaning for c in ErrorCode}
#: Codes whose cause may pass (a server restarting): a stage tries again while its retries last, then fails.
TRANSIENT_CODES = frozenset({ErrorCode.CONNECTION_FAILED, ErrorCode.TRANSFER_FAILED})
#: The errors of a full disk or quota: on the workers' staging space, STAGING_FULL, never the source's fault.
STAGING_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DxError(Exception):
    """Root of every error DataExchange raises on purpose."""


class RetriableError(DxError):
    """A transient failure: the same work may succeed when tried again."""


class RunError(DxError):
    """A failure that ends the run with a run-level error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class ConfigError(DxError):
    """Configuration problems, all of them at once, each naming its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def render_error_codes_markdown() -> str:
    """The text of docs/error-codes.md, generated from ErrorCode."""
    lines = [
        "# Error codes",
        "",
        "Generated from `shared/dx/shared/errors.py` by `dx docs`; do not edit by hand.",
        "",
    ]
    titles = {
        Level.RUN: "Run-level (the run fails; the database keeps its previous content)",
        Level.RECORD: "Record-level (one record is rejected and reported; the others are applied)",
        Level.REQUEST: "Request-level (a run request or a scheduled fire is refused or skipped; no data moves)",
        Level.API: "HTTP API (`dx serve`: the HTTP request is refused; nothing changes)",
        Level.WARNING: "Warnings (the run goes on; `dx show`, the API and the e-mail list the code among its "
                       "warnings)",
    }
    for level in Level:
        lines += [f"## {titles[level]}", "", "| code | meaning |", "|---|---|"]
        lines += [f"| `{c.value}` | {c.meaning} |" for c in ErrorCode if c.level is level]
        lines.append("")
    return "\n".join(lines)
