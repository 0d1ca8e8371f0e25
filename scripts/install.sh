#!/usr/bin/env bash
# Install recfunnel and its paired stack into .venv/ (idempotent; `make install` calls it).
#
# CPU (default): torch 2.13.0 CPU wheel, fbgemm-gpu-cpu 1.8.0, torchrec 1.8.0 with --no-deps
# plus torchrec's real needs. torchrec's metadata names the CUDA fbgemm-gpu, so it is not in
# pyproject's dependencies; installing it here keeps pip from pulling a multi-GB CUDA build.
# GPU (nvidia-smi sees a device, or RECFUNNEL_STACK=cuda): the CUDA builds of the same pairing
# from the PyTorch index for CUDA ${RECFUNNEL_CUDA:-cu128}.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STACK=${RECFUNNEL_STACK:-auto}
if [ "$STACK" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then STACK=cuda; else STACK=cpu; fi
fi
echo "[install] stack=$STACK venv=$VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
if [ "$STACK" = cuda ]; then
  CU=${RECFUNNEL_CUDA:-cu128}
  IDX="https://download.pytorch.org/whl/$CU"
  "${PIP[@]}" --index-url "$IDX" torch==2.13.0 fbgemm-gpu==1.8.0
  "${PIP[@]}" --no-deps torchrec==1.8.0
  CONSTRAINTS=(-c <(grep -v -e '^fbgemm-gpu-cpu' -e '^torch==' constraints.txt))
else
  "${PIP[@]}" -c constraints.txt torch==2.13.0 fbgemm-gpu-cpu==1.8.0
  "${PIP[@]}" -c constraints.txt --no-deps torchrec==1.8.0
  CONSTRAINTS=(-c constraints.txt)
fi
# torchrec's real needs, then the project with its dev extras (editable).
"${PIP[@]}" "${CONSTRAINTS[@]}" tensordict torchmetrics==1.0.3 pyre-extensions tqdm iopath
"${PIP[@]}" "${CONSTRAINTS[@]}" -e ".[dev]"
"$VENV/bin/python" - <<'PY'
import torch, torchrec, pytorch_lightning as pl, hydra
print(f"[install] ok: torch {torch.__version__}, torchrec {torchrec.__version__}, lightning {pl.__version__}, hydra {hydra.__version__}")
PY
