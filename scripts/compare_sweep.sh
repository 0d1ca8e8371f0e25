#!/usr/bin/env bash
# Compare the trials of a sweep: scripts/compare_sweep.sh SWEEP_DIR [--metric KEY] [--out DIR]
# (a table of the config keys that differ and the metrics, comparison.csv and plots in SWEEP_DIR/compare).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 SWEEP_DIR [--metric KEY] [--out DIR]" >&2
  exit 2
fi
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
exec "$PY" -m recfunnel.compare "$@"
