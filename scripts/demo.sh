#!/usr/bin/env bash
# Quick start, part 1: the Importer end to end on embedded defaults (no service needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec env -u DX_DATABASE_URL -u DX_BROKER_URL -u DX_REDIS_URL -u DX_SMTP_URL .venv/bin/dx demo "$@"
