#!/usr/bin/env bash
# Creates .venv and installs iwan with its pinned torch; reruns are quick no-ops.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.iwan-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # torch and torchvision pinned in the same command: anything else pulls several GB of CUDA wheels.
    .venv/bin/python -m pip install -q torch==2.13.0 torchvision==0.28.0 -e ".[dev,bench,ray]"
    echo "$want" > "$stamp"
fi
