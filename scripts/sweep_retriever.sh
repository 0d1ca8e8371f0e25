#!/usr/bin/env bash
# Optuna search of the two-tower retriever on ML-100K (configs/hparams_search/two_tower_optuna.yaml),
# then a comparison of its trials (scripts/compare_sweep.sh). Extra arguments are Hydra overrides:
#   scripts/sweep_retriever.sh hydra.sweeper.n_trials=5 trainer.max_epochs=5 logger=csv
#   scripts/sweep_retriever.sh hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweeper.n_jobs=2
# SWEEP_DIR=DIR chooses the sweep directory (default logs/train/multiruns/retriever_<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SWEEP_DIR=${SWEEP_DIR:-${RECFUNNEL_LOG_DIR:-logs}/train/multiruns/retriever_$(date +%Y-%m-%d_%H-%M-%S)}
echo "== sweep directory: $SWEEP_DIR"
"$PY" -m recfunnel.train -m experiment=ml100k_two_tower hparams_search=two_tower_optuna \
  hydra.sweep.dir="$SWEEP_DIR" "$@"
echo "== sweep directory: $SWEEP_DIR (summary.csv, optimization_results.yaml)"
"$PY" -m recfunnel.compare "$SWEEP_DIR"
