#!/usr/bin/env bash
# Optuna search of the funnel's ranker (configs/hparams_search/ranker_optuna.yaml) over one trained
# retriever, then a comparison of its trials. Extra arguments are Hydra overrides.
#   bash scripts/sweep_ranker.sh RETRIEVER_RUN_DIR [overrides...]
#   bash scripts/sweep_ranker.sh RUN experiment=ml100k_funnel hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweeper.n_jobs=2
# SWEEP_DIR=DIR chooses the sweep directory (default logs/funnel/multiruns/ranker_<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ $# -lt 1 || ! -f "$1/config.yaml" ]]; then
  echo "error: give a finished retriever run directory first (e.g. from: python -m recfunnel.train experiment=ml100k_two_tower)" >&2
  exit 2
fi
RETRIEVER=$1; shift
SWEEP_DIR=${SWEEP_DIR:-${RECFUNNEL_LOG_DIR:-logs}/funnel/multiruns/ranker_$(date +%Y-%m-%d_%H-%M-%S)}
echo "== sweep directory: $SWEEP_DIR"
"$PY" -m recfunnel.funnel -m hparams_search=ranker_optuna retriever.run_dir="$RETRIEVER" hydra.sweep.dir="$SWEEP_DIR" "$@"
echo "== sweep directory: $SWEEP_DIR (summary.csv, optimization_results.yaml)"
"$PY" -m recfunnel.compare "$SWEEP_DIR"
