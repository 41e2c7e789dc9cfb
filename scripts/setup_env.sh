#!/usr/bin/env bash
# Create or refresh .venv with the pinned versions and install metaad-dist (editable) into it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${METAAD_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.metaad-installed"
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "setup: metaad-dist needs Python >= 3.11 (its pinned numpy, pandas and scipy do); set PYTHON=python3.11")'
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned dependencies into $VENV (first time: about a minute)"
  "$VENV/bin/python" -m pip install -q "pip==26.3"  # pinned like the rest
  # setuptools' editable-install notice (BuildBackendWarning) is not ours to act on: filtered by module.
  PYTHONWARNINGS="ignore::UserWarning:setuptools.command.editable_wheel" \
    "$VENV/bin/python" -m pip install -q -c requirements/constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
