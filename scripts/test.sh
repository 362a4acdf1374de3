#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite:
# lint, type-check the add-on against Blender's stubs, the engine tests, then the Blender tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# the add-on is type-checked as it ships (with the engine inside), against fake-bpy-module
"$PY" build.py --no-validate >/dev/null
(cd build && ../.venv/bin/mypy --config-file ../pyproject.toml deepsdf_blender --exclude 'deepsdf_blender/engine/')
# engine and CLI tests, then the Blender tier in its own process (real bpy)
"$PY" -m pytest -q tests --ignore=tests/blender "$@"
"$PY" -m pytest -q tests/blender -p no:cacheprovider "$@"
