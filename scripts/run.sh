#!/usr/bin/env bash
# The main job: train on the built-in digits dataset in one local process, then evaluate on the
# held-out families beside the inner-loop-only ablation and IsolationForest. Overrides pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. "${METAAD_VENV:-.venv}/bin/activate"
metaad train data=digits model=mlp_image run=digits-demo "$@"
metaad evaluate data=digits run=digits-demo "$@"
