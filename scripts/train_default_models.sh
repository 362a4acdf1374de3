#!/usr/bin/env bash
# Reproduce a bundled model from its recipe (recipes/README.md). Usage: train_default_models.sh chairs|tables
set -euo pipefail
cd "$(dirname "$0")/.."
CLASS=${1:?chairs or tables}
DEVICE=${DEVICE:-auto}
PY=${PYTHON:-python}
case "$CLASS" in
  chairs) COUNT=160 ;;
  tables) COUNT=96 ;;
  *) echo "unknown class $CLASS" >&2; exit 2 ;;
esac
mkdir -p runs
$PY -m engine make-shapes "$CLASS" --count "$COUNT" --seed 0 --samples 200000 --test-fraction 0.1 \
  --out "runs/${CLASS}_data" --meshes "runs/${CLASS}_meshes"
$PY -m engine train "runs/${CLASS}_data" --config "recipes/${CLASS}.json" --class-name "$CLASS" \
  --out "runs/${CLASS}.dsdf" --tensorboard "runs/tb/${CLASS}" --device "$DEVICE" ${RESUME:+--resume}
$PY -m engine evaluate-model "runs/${CLASS}.dsdf" "runs/${CLASS}_data" --split test --device "$DEVICE" \
  --json "runs/${CLASS}_eval.json"
mkdir -p engine/models
cp "runs/${CLASS}.dsdf" "engine/models/${CLASS}.dsdf"
