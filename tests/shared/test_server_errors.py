"""A client server's error is told in our words, never by its own text (which a hostile server can make
echo the password); a secret reference reads tenants' secrets only."""

from __future__ import annotations

import errno

import paramiko
import psycopg
import psycopg.errors
import pymysql
import pytest

from dx.shared.config import ConnectionCfg
from dx.shared.connections import mysql, postgres, resolve_secret, sftp
from dx.shared.errors import ErrorCode, RunError

#: What a hostile server puts in its messages.
ECHO = "the password is hunter2-s3cr3t"
PG = ConnectionCfg(id="c", tenant="t", type="postgres", host="db.client.example", dbname="crm", username="u",
                   password="${DX_SECRET_CRM}")


@pytest.mark.parametrize("name", ["DX_DATABASE_URL", "DX_BROKER_URL", "PATH"])
def test_a_reference_outside_the_secret_prefix_is_never_read(monkeypatch, name):
    # Given a stored connection (applied before the prefix was required) naming one of the workers' own variables
    monkeypatch.setenv(name, ECHO)
    # When its secret is read / Then SECRET_MISSING says why and what to do, and the value is read by no one
    with pytest.raises(RunError) as info:
        resolve_secret(f"${{{name}}}")
    assert info.value.code is ErrorCode.SECRET_MISSING
    assert info.value.message == (f"${{{name}}} is not a tenant secret (its name does not start with DX_SECRET_) "
                                  "and is never read: apply the connection again naming a DX_SECRET_ variable")


def test_a_tenant_secret_is_read(monkeypatch):
    monkeypatch.setenv("DX_SECRET_ACME_PW", "pw")
    assert resolve_secret("${DX_SECRET_ACME_PW}") == "pw"


@pytest.mark.parametrize(("error", "says"), [
    (psycopg.errors.RaiseException(ECHO), "an exception raised by a function it calls (SQLSTATE P0001 raise_exception)"),
    (psycopg.errors.ReadOnlySqlTransaction(ECHO),
     "a write refused by the read-only transaction (SQLSTATE 25006 read_only_sql_transaction)"),
    (psycopg.errors.SyntaxError(ECHO), "the query does not parse as one SELECT statement (SQLSTATE 42601 syntax_error)"),
    (psycopg.errors.DivisionByZero(ECHO), "the server refused the query (SQLSTATE 22012 division_by_zero)"),
    (psycopg.ProgrammingError(ECHO), "(ProgrammingError)"),
])
def test_a_postgresql_query_error_is_told_by_its_sqlstate(error, says):
    reason = postgres._reason(error)
    assert reason.startswith("the source could not be read") and reason.endswith(says)
    assert "hunter2" not in reason


@pytest.mark.parametrize(("state", "name"), [
    ("22ZZZ", "SQLSTATE class 22 data_exception"),   # a server's own code in a known class
    ("HUNT2", "no known SQLSTATE"),                   # five characters of the server's choosing
    (None, "no known SQLSTATE"),
])
def test_an_unknown_sqlstate_is_named_by_its_class_or_not_at_all(state, name):
    assert postgres.sqlstate_name(state) == name


@pytest.mark.parametrize(("text", "code", "says"), [
    (f'connection to server at "1.2.3.4", port 5432 failed: FATAL:  {ECHO}', ErrorCode.CONNECTION_FAILED,
     "the connection failed before login"),
    ("connection to server failed: Connection refused", ErrorCode.CONNECTION_FAILED,
     "nothing accepts connections on that port"),
    ("server does not support SSL, but SSL was required", ErrorCode.TLS_REQUIRED, "the server does not offer TLS"),
    (f'server certificate for "{ECHO}" does not match host name "db.client.example"', ErrorCode.TLS_REQUIRED,
     "the server's TLS certificate did not verify"),
    (f"FATAL:  password authentication failed for user {ECHO}", ErrorCode.AUTHENTICATION_FAILED, "refused user 'u'"),
])
def test_a_postgresql_connection_error_is_told_in_our_words(text, code, says):
    # Given libpq's message, which may quote what the server said / When told / Then by our words only
    refused = postgres._refused(PG, psycopg.OperationalError(text))
    assert refused.code is code and says in refused.message and "hunter2" not in refused.message


@pytest.mark.parametrize(("error", "says"), [
    (pymysql.err.OperationalError(1644, ECHO), "an error signalled by a function it calls (MySQL error 1644)"),
    (pymysql.err.ProgrammingError(1146, f"Table '{ECHO}' doesn't exist"),
     "a table or view it names does not exist (MySQL error 1146 ER_NO_SUCH_TABLE)"),
    (pymysql.err.OperationalError(2003, f"Can't connect to MySQL server on '{ECHO}'"),
     "nothing answered on that port (MySQL error 2003 CR_CONN_HOST_ERROR)"),
    (pymysql.err.InternalError(4242, ECHO), "the server refused it (MySQL error 4242)"),
    (pymysql.err.InterfaceError(ECHO), "the driver failed (InterfaceError)"),
])
def test_a_mysql_error_is_told_by_its_number(error, says):
    assert mysql._summary(error) == says


@pytest.mark.parametrize(("error", "says", "kind"), [
    (OSError(ECHO), "the SFTP server answered failure", OSError),          # SFTP_FAILURE: the server's text only
    (OSError(errno.ENOENT, ECHO), "No such file or directory", FileNotFoundError),
    (OSError(errno.EACCES, ECHO), "Permission denied", PermissionError),
    (EOFError(ECHO), "the server ended the file or the session early", EOFError),
])
def test_an_sftp_status_is_told_in_our_words_and_keeps_its_kind(error, says, kind):
    assert sftp.summary(error) == says
    # and an operation that raises it raises the same kind of error, with our text
    with pytest.raises(kind) as info, sftp._in_our_words():
        raise error
    assert "hunter2" not in str(info.value) and says in str(info.value)


def test_an_ssh_failure_is_told_in_our_words():
    assert sftp.summary(paramiko.SSHException(f'Indecipherable protocol version "{ECHO}"')) == "the SSH session failed"
