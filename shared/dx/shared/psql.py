"""COPY … TO STDOUT into a file through psql, PostgreSQL's own client, where it is installed.

A COPY's rows come out of PostgreSQL one protocol message each. psycopg hands
every one of them to Python, which costs a worker more CPU than PostgreSQL
spends producing them; psql writes them to the file in C. The export chunks
use it when the
``psql`` program is on the PATH and the database URL can be handed to it in
libpq's environment variables (never on its command line, where ``ps``
shows it); else they read the COPY with psycopg.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

#: The program.
PSQL = "psql"
#: libpq's connection parameters and the environment variables that carry them.
ENVIRONMENT = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "service": "PGSERVICE", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "connect_timeout": "PGCONNECT_TIMEOUT", "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL",
    "channel_binding": "PGCHANNELBINDING", "gssencmode": "PGGSSENCMODE",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}
#: What psql writes to standard error before the COPY's row count.
ROWS_MARK = "dx-copy-rows"
#: An error as psql prints it with VERBOSITY verbose: its SQLSTATE, then the message.
ERROR_LINE = re.compile(r"ERROR:\s+([0-9A-Z]{5}):\s*(.*)")


class CopyFailed(Exception):
    """psql ended with an error: PostgreSQL's SQLSTATE (None if it never got an answer) and message."""

    def __init__(self, sqlstate: str | None, message: str) -> None:
        super().__init__(message)
        self.sqlstate, self.message = sqlstate, message


@lru_cache(maxsize=4)
def usable(url: str) -> bool:
    """Whether psql is installed and ``url``'s every parameter has an environment variable."""
    return shutil.which(PSQL) is not None and all(k in ENVIRONMENT for k in conninfo_to_dict(url))


def copy_to_file(url: str, setup: list[str], statement: str, path: Path) -> int:
    """Run the SQL commands ``setup``, then ``statement`` (a COPY … TO STDOUT, its values inlined), in one
    psql session whose COPY output goes to ``path``; the number of rows. CopyFailed if it fails."""
    script = "".join(f"{command};\n" for command in setup) + (
        f"{statement} \\g {_argument(path)}\n\\warn {ROWS_MARK} :ROW_COUNT\n")
    # the URL's parameters over the worker's own PG* variables, as libpq weighs them for psycopg
    env = {**os.environ, **{ENVIRONMENT[k]: str(v) for k, v in conninfo_to_dict(url).items()}}
    done = subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-f", "-"],
                          input=script.encode(), capture_output=True, env=env, check=False)
    said = done.stderr.decode(errors="replace").strip()
    rows = re.search(rf"^{ROWS_MARK} (\d+)$", said, re.MULTILINE)
    if done.returncode != 0 or rows is None:
        error = ERROR_LINE.search(said)
        raise CopyFailed(error.group(1), error.group(2).strip()) if error else CopyFailed(None, said)
    return int(rows.group(1))


def _argument(path: Path) -> str:
    """``path`` as an argument of a psql meta-command: single-quoted, its quotes doubled and its
    backslashes escaped (psql reads escapes in quoted arguments)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "''") + "'"
