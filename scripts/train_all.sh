#!/usr/bin/env bash
# The main job behind `make train`: data → baseline → two-tower retrieval → report.
# Extra arguments are Hydra overrides for the training stage (e.g. `make train ARGS="trainer=gpu"`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN_DIR:-logs/train_all/$(date +%Y-%m-%d_%H-%M-%S)}
echo "== 1/3 data: MovieLens-100K (fetched once into data/)"
"$PY" -m recfunnel.data.prepare data=ml100k
echo "== 2/3 most-popular baseline (valid + test, ../shared/EVALUATION.md protocol)"
"$PY" -m recfunnel.evaluate model=popularity hydra.run.dir="$RUN/popularity"
echo "== 3/3 two-tower retrieval (experiment=ml100k_two_tower)"
"$PY" -m recfunnel.train experiment=ml100k_two_tower hydra.run.dir="$RUN/two_tower" trainer.enable_progress_bar=false "$@"
echo "== report"
"$PY" -m recfunnel.eval.report "$RUN/popularity" "$RUN/two_tower"
echo "runs: $RUN"
