#!/usr/bin/env bash
# The main job behind `make train`: data → baseline → report. Extra arguments are Hydra overrides
# passed to every stage (e.g. `make train ARGS="paths.log_dir=/tmp/logs"`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN_DIR:-logs/train_all/$(date +%Y-%m-%d_%H-%M-%S)}
echo "== 1/2 data: MovieLens-100K (fetched once into data/)"
"$PY" -m recfunnel.data.prepare data=ml100k "$@"
echo "== 2/2 most-popular baseline (valid + test, ../shared/EVALUATION.md protocol)"
"$PY" -m recfunnel.evaluate model=popularity hydra.run.dir="$RUN/popularity" "$@"
echo "== report: $RUN/popularity/metrics.json"
