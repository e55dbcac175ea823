#!/usr/bin/env bash
# The test command: set-up, then the whole suite against an embedded PostgreSQL. Tests marked
# real_data use IWAN_DATA_DIR or ../shared/data and are skipped, with the reason, where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh
exec .venv/bin/python -m pytest -q --timeout=600 "$@"
