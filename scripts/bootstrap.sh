#!/usr/bin/env bash
# Creates .venv (idempotent); called by demo.sh and test.sh. First every third-party package of
# requirements.lock, each checked against its sha256 (pip's --require-hashes: a package the lock does
# not list fails the install), then the five distributions in editable mode without dependencies, built
# with the lock's setuptools. Compat mode puts each distribution's folder on sys.path, so that mypy and
# import-linter see the dx namespace whole. scripts/lock.sh refreshes the lock (docs/dependencies.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml ./*/pyproject.toml requirements.lock | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --require-hashes -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat \
    -e ./shared -e ./workers -e ./scheduler -e ./cli -e ./devkit -e .
  .venv/bin/python -m pip check >/dev/null || {
    .venv/bin/python -m pip check >&2; echo "bootstrap: requirements.lock misses these: bash scripts/lock.sh" >&2
    exit 1; }
  rm -f .venv/.installed-* && touch "$stamp"
fi
# checkov (the Kubernetes security linter of tests/deploy) pins packaging<24 where pytest needs >=24:
# it gets a virtualenv of its own, .venv/checkov, pinned by requirements-checkov.lock.
checkov_stamp=.venv/checkov/.installed-$(sha1sum requirements-checkov.lock | cut -c1-12)
if [ ! -f "$checkov_stamp" ]; then
  rm -rf .venv/checkov
  "$PY" -m venv .venv/checkov
  .venv/checkov/bin/python -m pip install -q -r requirements-checkov.lock
  touch "$checkov_stamp"
fi
