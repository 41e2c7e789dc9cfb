#!/usr/bin/env bash
# The main job: train on the built-in synthetic table (generated on the fly, no download; see
# README "What the demo shows") in one local process, then evaluate on its held-out anomaly
# families beside the inner-loop-only ablation and IsolationForest. Overrides pass through,
# e.g. `bash scripts/run.sh seed=3`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. "${METAAD_VENV:-.venv}/bin/activate"
metaad train data=synthetic run=synthetic-demo "$@"
metaad evaluate data=synthetic run=synthetic-demo "$@"
