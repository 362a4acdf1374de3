#!/usr/bin/env bash
# The main job end to end on a fresh machine: set up, build the extension, start Blender
# headless (the bpy module), install it, complete the bundled example scan, generate six
# variants, interpolate five steps, save out/demo.blend and render out/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python scripts/demo.py "$@"
