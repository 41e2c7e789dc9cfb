#!/usr/bin/env bash
# The whole test suite: sets up .venv, then runs pytest (real Ray, real Parquet, a real S3 server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. "${METAAD_VENV:-.venv}/bin/activate"
python -m pytest "$@"
