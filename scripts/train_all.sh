#!/usr/bin/env bash
# The main job behind `make train`: data → baseline → retriever → index → ranker → funnel evaluation → report.
# Extra arguments are Hydra overrides for the funnel (e.g. `make train ARGS="trainer=gpu"`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN_DIR:-logs/train_all/$(date +%Y-%m-%d_%H-%M-%S)}
echo "== 1/3 data: MovieLens-100K (fetched once into data/)"
"$PY" -m recfunnel.data.prepare data=ml100k
echo "== 2/3 most-popular baseline (valid + test, ../shared/EVALUATION.md protocol)"
"$PY" -m recfunnel.evaluate model=popularity hydra.run.dir="$RUN/popularity"
echo "== 3/3 funnel (experiment=ml100k_funnel): two-tower retriever + FAISS index → DLRM ranker → re-ranking"
"$PY" -m recfunnel.funnel experiment=ml100k_funnel hydra.run.dir="$RUN/funnel" trainer.enable_progress_bar=false "$@"
echo "== report (test split)"
"$PY" -m recfunnel.eval.report "$RUN/popularity" "$RUN/funnel/retriever" "$RUN/funnel"
echo "funnel stages: $RUN/funnel/funnel.md, $RUN/funnel/funnel.png"
echo "runs: $RUN"
