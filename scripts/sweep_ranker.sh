#!/usr/bin/env bash
# Optuna search of the DLRM ranker (configs/hparams_search/ranker_optuna.yaml), then a comparison
# of its trials. Extra arguments are Hydra overrides, as for scripts/sweep_retriever.sh.
# SWEEP_DIR=DIR chooses the sweep directory (default logs/train/multiruns/ranker_<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ ! -f configs/model/dlrm.yaml ]]; then
  echo "error: the DLRM ranker is not built yet (configs/model/dlrm.yaml is missing); sweep the retriever with scripts/sweep_retriever.sh" >&2
  exit 2
fi
SWEEP_DIR=${SWEEP_DIR:-${RECFUNNEL_LOG_DIR:-logs}/train/multiruns/ranker_$(date +%Y-%m-%d_%H-%M-%S)}
echo "== sweep directory: $SWEEP_DIR"
"$PY" -m recfunnel.train -m hparams_search=ranker_optuna hydra.sweep.dir="$SWEEP_DIR" "$@"
echo "== sweep directory: $SWEEP_DIR (summary.csv, optimization_results.yaml)"
"$PY" -m recfunnel.compare "$SWEEP_DIR"
