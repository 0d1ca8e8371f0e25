#!/usr/bin/env bash
# The README's ablation table on ML-100K: each row trained with 3 seeds, then aggregated.
#   bash scripts/ablation.sh [ROOT_DIR] [extra Hydra overrides...]
# Rows are run one after another (about 90 minutes on 2 CPU cores; EPOCHS=12 by default, row 11 80); results: ROOT_DIR/<row>/seed<k>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${1:-logs/ablation}; shift || true
SEEDS=${SEEDS:-"0 1 2"}
LINEAR="model.net.user_hidden=[] model.net.item_hidden=[]"
ATT="model.net.history_encoder=attention data.train_windows=16 model.net.encoder.dropout=0.3"
declare -A ROWS=(
  [1_ids_only]="features=ml100k_ids $LINEAR"
  [2_side_features]="features=ml100k_side"
  [3_history_mean]="features=ml100k_seq $LINEAR"
  [4_history_recency]="features=ml100k_seq $LINEAR model.net.history_encoder=recency"
  [5_history_attention]="features=ml100k_seq $LINEAR $ATT"
  [6_all_features_attention]="features=ml100k $LINEAR $ATT"
  [7_attention_no_logq]="features=ml100k_seq $LINEAR $ATT model.loss.logq_correction=false"
  [8_attention_mixed_negatives]="features=ml100k_seq $LINEAR $ATT model.loss.num_uniform_negatives=256"
  [9_history_recency_titles]="features=ml100k_text $LINEAR model.net.history_encoder=recency"
  [10_all_features_recency]="features=ml100k $LINEAR model.net.history_encoder=recency"
  # row 5's model trained as SASRec is (windows of 50, exact softmax, dropout 0.3, lr 2e-3), 80 epochs
  [11_history_attention_sasrec_training]="experiment=ml100k_two_tower_transformer trainer.max_epochs=80"
)
for row in $(printf '%s\n' "${!ROWS[@]}" | sort); do
  for seed in $SEEDS; do
    dir="$ROOT/$row/seed$seed"
    [ -f "$dir/metrics.json" ] && continue   # done already: rerunning resumes the table
    echo "== $row seed $seed"
    mkdir -p "$ROOT/$row"
    # shellcheck disable=SC2086
    "$PY" -m recfunnel.train logger=csv trainer.max_epochs=${EPOCHS:-12} trainer.enable_progress_bar=false \
      seed="$seed" hydra.run.dir="$dir" ${ROWS[$row]} "$@" > "$dir.log" 2>&1 || echo "failed: see $dir.log"
  done
done
"$PY" -m recfunnel.compare "$ROOT" --aggregate --out "$ROOT"
