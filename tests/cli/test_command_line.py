"""The ``dx`` command itself, without services: its version, shell completion, the error-code
reference, exit code 3 when PostgreSQL does not answer, and a reader that goes away."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from dx.devkit.sshd import free_port
from dx.shared.errors import render_error_codes_markdown

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def _dx(*args: str, cwd: Path, env: dict[str, str] | None = None,
        stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """``python -m dx ARGS`` in ``cwd``, with the DX_* variables of ``env`` only."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DX_")}
    return subprocess.run([sys.executable, "-m", "dx", *args], env=base | (env or {}), cwd=cwd, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=60)


def test_version_prints_the_installed_dx_cli_version(tmp_path):
    # When / Then: the installed distribution's version, exit 0
    result = _dx("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"dx {version('dx-cli')}\n"


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o bashdefault -F _shtab_dx dx"),
                                           ("zsh", "#compdef dx"), ("tcsh", "complete dx")])
def test_completion_prints_a_script_for_each_shell(shell, marker, tmp_path):
    result = _dx("completion", shell, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
    # every command is in it
    for command in ("migrate", "apply", "runs", "report", "schedule", "token", "completion"):
        assert command in result.stdout


def test_bash_completes_commands_options_and_files(tmp_path):
    # Given: the bash script loaded in a bash, and a file in the current directory
    (tmp_path / "config.yaml").write_text("tenants: []\n")
    script = tmp_path / "dx.bash"
    script.write_text(_dx("completion", "bash", cwd=tmp_path).stdout)

    def complete(*words: str) -> set[str]:
        line = " ".join(words)
        quoted = " ".join(f"'{w}'" for w in words)
        probe = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
                 f"COMP_LINE='{line}'; COMP_POINT={len(line)}; "
                 f"_shtab_dx dx '{words[-1]}' '{words[-2]}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        done = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return set(done.stdout.split())

    # When / Then: a command's prefix, a listing's options, a file name after -f
    assert complete("dx", "ru") == {"run", "runs"}
    assert {"--json", "--module", "--limit"} <= complete("dx", "runs", "--")
    assert complete("dx", "apply", "-f", "con") == {"config.yaml"}


def test_docs_prints_the_reference_on_stdout_with_o_dash(tmp_path):
    # When: the reference is asked for on stdout, in a directory that is no checkout
    result = _dx("docs", "-o", "-", cwd=tmp_path)
    # Then: it is the generated reference, and nothing was written
    assert result.returncode == 0, result.stderr
    assert result.stdout == render_error_codes_markdown()
    assert list(tmp_path.iterdir()) == []


def test_docs_writes_and_checks_a_file_given_with_o(tmp_path):
    target = tmp_path / "codes.md"
    assert _dx("docs", "--check", "-o", str(target), cwd=tmp_path).returncode == 1  # missing: out of date
    assert _dx("docs", "-o", str(target), cwd=tmp_path).returncode == 0
    assert target.read_text(encoding="utf-8") == render_error_codes_markdown()
    assert _dx("docs", "--check", "-o", str(target), cwd=tmp_path).returncode == 0
    # and in the checkout, --check compares with docs/error-codes.md (scripts/test.sh runs it)
    assert _dx("docs", "--check", cwd=ROOT).returncode == 0


@pytest.mark.parametrize("command", [["runs"], ["modules"], ["migrate"], ["token", "list"], ["show", "1"],
                                     ["schedule", "m", "--json"]])
def test_an_unreachable_postgresql_exits_3_with_a_message(command, tmp_path):
    # Given: DX_DATABASE_URL pointing at a port where nothing listens
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/dx"
    # When
    result = _dx(*command, env={"DX_DATABASE_URL": url}, cwd=tmp_path)
    # Then: 3 (try again later), not 2 (fix the command), and one message, no traceback
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("dx: PostgreSQL is not reachable")
    assert "Traceback" not in result.stderr


def test_a_bad_option_still_exits_2(tmp_path):
    result = _dx("runs", "--no-such-option", cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr


def test_output_into_a_closed_pipe_ends_quietly_with_141(tmp_path):
    # Given: stdout a pipe whose reader has gone (as after `| head -1`)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        # When: a command writes to it
        result = _dx("docs", "-o", "-", cwd=tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    # Then: 128 + SIGPIPE, and nothing on stderr (no traceback, no "Exception ignored")
    assert result.returncode == 141
    assert result.stderr == ""

