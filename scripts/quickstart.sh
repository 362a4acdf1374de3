#!/usr/bin/env bash
# Set up, then run the engine end to end from the command line: import a reference
# DeepSDF experiment, mesh its shapes, generate, interpolate, reconstruct and evaluate.
# Results go to out/quickstart/. MODEL=path overrides the model (default: the
# reference fixture in ../shared, a `paper`-size decoder trained on three shapes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
OUT=out/quickstart
mkdir -p "$OUT"
MODEL=${MODEL:-../shared/fixtures/deepsdf_reference/experiment}
RES=${RES:-96}
run() { echo "+ $*" >&2; /usr/bin/time -f "  (%e s)" "$PY" -m engine "$@"; }
if [ -d "$MODEL" ]; then
  run import-deepsdf "$MODEL" --out "$OUT/model.dsdf"
  MODEL="$OUT/model.dsdf"
fi
run info "$MODEL"
run mesh --model "$MODEL" --index 0 --resolution "$RES" --out "$OUT/shape0.ply" --normals
run generate --model "$MODEL" --count 3 --seed 1 --temperature 0.5 --resolution "$RES" --out "$OUT/generated"
run interpolate --model "$MODEL" --from 0 --to 1 --steps 5 --resolution "$RES" --out "$OUT/interpolation"
run reconstruct --model "$MODEL" --input "$OUT/shape0.ply" --known-frame --resolution "$RES" --out "$OUT/reconstructed.ply"
run evaluate "$OUT/reconstructed.ply" "$OUT/shape0.ply"
echo "done: results in $OUT" >&2
