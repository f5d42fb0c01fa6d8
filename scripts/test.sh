#!/usr/bin/env bash
# Quick start, part 2: the whole test suite. Sets up the virtualenv, checks the
# services (starting any that is down), lints, checks the import contracts, type-checks, then runs pytest
# (its fixtures start an OpenSSH sshd on a loopback port and an SMTP server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
. .venv/bin/activate
ruff check shared workers scheduler cli devkit tests bench
lint-imports
mypy
dx docs --check
pytest "$@"
