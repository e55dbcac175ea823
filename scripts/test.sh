#!/usr/bin/env bash
# The test command: set-up, lint, then the whole suite against an embedded PostgreSQL. Tests marked
# real_data use IWAN_DATA_DIR or ../shared/data and are skipped, with the reason, where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh
# The habits the suite cannot see: lint, types, and the layering contracts (pyproject.toml).
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache
.venv/bin/mypy
exec .venv/bin/python -m pytest -q --timeout=600 "$@"
