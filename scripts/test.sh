#!/usr/bin/env bash
# The test command: set-up, then the whole suite against an embedded PostgreSQL and ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh
exec .venv/bin/python -m pytest -q --timeout=600 "$@"
