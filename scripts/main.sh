#!/usr/bin/env bash
# The main job, end to end on the embedded PostgreSQL: set-up, database, norms, summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Local copies of external data: the project's shared folder when it sits beside the checkout.
if [ -z "${IWAN_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export IWAN_DATA_DIR=$(cd ../shared/data && pwd)
fi
export IWAN_HOME=${IWAN_HOME:-$PWD/.iwan-home}
iwan=.venv/bin/iwan
$iwan db upgrade
$iwan norms load --json
$iwan norms show LAB --top 3 --json
$iwan db status
