#!/usr/bin/env bash
# The GPU check: one command, run from the repo root on a lent GPU machine (one H200, Python 3.12,
# torch 2.11 / CUDA 13, pytorch-lightning, torchmetrics, pandas, pyarrow, rich, tqdm; no registry),
# after `bash scripts/gpu_bundle.sh` here has filled .gpu_bundle/ (wheels + ML-100K tables).
#
#   device tool:  run(command="bash scripts/gpu_check.sh", carry=[".gpu_bundle"], timeout_s=560)
#   on the CPU:   bash scripts/gpu_check.sh --cpu-dry-run     (or GPU_CHECK_DRY_RUN=1; see below)
#
# Steps, each under `timeout` and all within GPU_CHECK_BUDGET_S (default 470 s, ~8 min); a failing
# step is recorded (status, exit code, seconds, its last lines) and the next one runs:
#   install      ML-100K tables + RecBole files from .gpu_bundle/data into data/ (unless there);
#                the carried wheels into a target folder put on PYTHONPATH (pip --no-index --no-deps;
#                one the image already has is left to the image: pyre-extensions, typing-inspect,
#                mypy-extensions); this package as `pip install --no-deps --no-build-isolation -e .`
#                (src/ is on PYTHONPATH as well, so the check runs even if that install fails)
#   env          versions, nvidia-smi -L, the device, which imports work, whether fbgemm has CUDA kernels
#   tests        python -m pytest -m gpu tests/test_gpu.py (both embedding backends; the torchrec ones
#                are expected to fail on fbgemm-gpu-cpu, each outcome is recorded)
#   retriever    one bf16 epoch of experiment=ml100k_two_tower_full (trainer=gpu, backend torch, logger=csv),
#                then full-corpus valid/test evaluation and the FAISS index (what `recfunnel.train` does)
#   funnel       experiment=ml100k_funnel reusing that run (retriever.run_dir): one bf16 epoch of the
#                DCN-v2 ranker, then the funnel evaluated stage by stage on valid and test
#   bench        benchmarks/bench_gpu.py: two-tower and DLRM training samples/s at batch 8192 and 32768
#                (bf16), full-corpus evaluation users/s; targets 1M and 500k samples/s
#   torchrec_*   allowed to fail: model.net.backend=torchrec for a few steps (debug=fast), and the
#                bench for a few steps; what it hit is recorded
# Result: ONE JSON, $OUT/gpu_check.json when OUT is set (else ./gpu_check.json), rewritten after every
# step (a check cut short still leaves what it had); all step logs in $OUT/gpu_check.log, the funnel's
# stage table in $OUT/funnel.md. Exit status 0 when install, env, retriever, funnel and bench are ok.
#
# --cpu-dry-run: the same steps on the CPU with the repo's .venv, trainer=cpu, a few batches per
# stage, tiny bench sizes, a fresh data folder under the work dir (so feature stores are rebuilt as on
# the machine); the wheels are installed for CPython 3.12 / manylinux into a scratch folder (which
# checks the bundle's tags) but not used; its data and wheel folders are removed at the end unless
# GPU_CHECK_KEEP_WORK=1. Other settings: GPU_CHECK_BUDGET_S, GPU_CHECK_WORK (work dir, default a fresh
# /tmp/gpu_check.*), PYTHON (the interpreter; default python3, .venv's on a dry run).
set -uo pipefail
CALLER_CWD=$PWD
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

DRY=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$WORK/logs" "$WORK/runs"
RESULT=${OUT:+$OUT/gpu_check.json}
RESULT=${RESULT:-$CALLER_CWD/gpu_check.json}
ALL_LOG=${OUT:+$OUT/gpu_check.log}
ALL_LOG=${ALL_LOG:-$WORK/gpu_check.log}
: >"$ALL_LOG"
STEPS=$WORK/steps.jsonl
: >"$STEPS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HYDRA_FULL_ERROR=1 WANDB_MODE=disabled

if [[ $DRY == 1 ]]; then
  MODE=cpu-dry-run
  PY=${PYTHON:-$ROOT/.venv/bin/python}
  DATA_DIR=$WORK/data          # a fresh data folder: the feature stores are built as on the machine
  TRAINER=(trainer=cpu ++trainer.limit_train_batches=5 ++trainer.limit_val_batches=2 ++trainer.limit_test_batches=2)
  FUNNEL_EXTRA=(pairs.max_events_per_user=2 funnel.timing_users=5)
  BENCH=(--device cpu --steps 5 --warmup 1 --batch-sizes 512 --rows-cap 20000 --eval-items 20000 --eval-users 512)
  BENCH_TR=(--device cpu --steps 3 --warmup 1 --batch-sizes 512 --rows-cap 20000 --no-eval)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # a shared 2-core machine: stay on one core
else
  MODE=gpu
  PY=${PYTHON:-python3}
  DATA_DIR=$ROOT/data
  TRAINER=(trainer=gpu)
  FUNNEL_EXTRA=()
  BENCH=(--device cuda --steps 300 --warmup 30 --batch-sizes 8192 32768 --interactions dcn dot)
  BENCH_TR=(--device cuda --steps 5 --warmup 2 --batch-sizes 8192 --no-eval)
fi
export RECFUNNEL_DATA_DIR=$DATA_DIR RECFUNNEL_LOG_DIR=$WORK/runs
SITE=$WORK/site
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
[[ $DRY == 1 ]] || export PYTHONPATH=$SITE:$PYTHONPATH
export ROOT WORK DATA_DIR SITE PY DRY   # for the steps that are functions of this script (run by bash -c)

say() { echo "$*" | tee -a "$ALL_LOG"; }
elapsed() { echo $(( $(date +%s) - START )); }

# record NAME STATUS RC SECONDS TIMEOUT LOGFILE [NOTE]: one line of steps.jsonl
record() {
  "$PY" - "$@" >>"$STEPS" <<'PYEOF'
import json, re, sys
name, status, rc, seconds, timeout, log = sys.argv[1:7]
note = sys.argv[7] if len(sys.argv) > 7 else ""
try:
    lines = open(log, errors="replace").read().splitlines()
except OSError:
    lines = []
# the line that says what went wrong: the last exception / error line of the log, if any
pattern = re.compile(r"(Error|Exception|error:|FAILED|Traceback|Killed|No module named)")
errors = [l.strip() for l in lines if pattern.search(l) and not l.lstrip().startswith("File ")]
tail = "\n".join(lines[-40:])[-4000:]
print(json.dumps({"name": name, "status": status, "rc": None if rc == "" else int(rc), "seconds": float(seconds),
                  "timeout_s": None if timeout == "" else int(timeout), "note": note,
                  "error": (errors[-1][-600:] if errors else "") if status != "ok" else "", "tail": tail}))
PYEOF
}

# run_step NAME TIMEOUT RESERVE CMD...: CMD under `timeout`, at most TIMEOUT seconds and never into the
# RESERVE seconds kept for the steps after it (scaled with the budget); its output goes to
# logs/NAME.log (and gpu_check.log). A step left with under 15 s is skipped.
run_step() {
  local name=$1 limit=$2 reserve=$3; shift 3
  local log=$WORK/logs/$name.log left t0 t1 rc status
  reserve=$(( reserve * BUDGET / 470 ))   # the reserves below are sized for the default budget
  left=$(( BUDGET - $(elapsed) - reserve ))
  (( limit > left )) && limit=$left
  if (( limit < 15 )); then
    say "=== [$name] skipped: out of time ($(elapsed)s of ${BUDGET}s used)"
    : >"$log"; record "$name" skipped "" 0 "" "$log" "out of time budget"
    assemble; return 0
  fi
  say "=== [$name] $(date -u +%H:%M:%S) (limit ${limit}s): $*"
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local note="" ran; ran=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%d", b - a}')
  case $rc in
    0) status=ok ;;
    124) status=timeout; note="timed out after ${limit}s" ;;
    137) if (( ran >= limit )); then status=timeout; note="timed out after ${limit}s (killed)"
         else status=failed; note="killed by SIGKILL after ${ran}s (out of memory?)"; fi ;;
    *) status=failed ;;
  esac
  { echo "----- [$name] log -----"; cat "$log"; echo "----- [$name] $status (rc $rc) -----"; } >>"$ALL_LOG"
  tail -n 12 "$log"
  local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
  echo "=== [$name] $status (rc $rc, ${secs}s; $(elapsed)s of ${BUDGET}s used)" | tee -a "$ALL_LOG"
  record "$name" "$status" "$rc" "$secs" "$limit" "$log" "$note"
  assemble
}

skip_step() {  # skip_step NAME WHY
  : >"$WORK/logs/$1.log"; record "$1" skipped "" 0 "" "$WORK/logs/$1.log" "$2"; say "=== [$1] skipped: $2"; assemble
}

# assemble: the one JSON, from what the steps left in the work dir (rewritten after each step)
assemble() {
  MODE=$MODE WORK=$WORK RESULT=$RESULT START=$START BUDGET=$BUDGET "$PY" - <<'PYEOF' || echo "!! could not write the JSON"
import json, os, time, xml.etree.ElementTree as ET
from pathlib import Path

work, result = Path(os.environ["WORK"]), Path(os.environ["RESULT"])

def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

steps = [json.loads(l) for l in (work / "steps.jsonl").read_text().splitlines() if l.strip()]
by_name = {s["name"]: s for s in steps}
out = {"check": "recfunnel gpu_check", "mode": os.environ["MODE"],
       "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(os.environ["START"]))),
       "wall_s": round(time.time() - int(os.environ["START"]), 1), "budget_s": int(os.environ["BUDGET"]),
       "env": load(work / "env.json"), "install": load(work / "install.json")}

# the gpu tests, one outcome per test case (from pytest's junit XML)
tests = None
if (work / "pytest_gpu.xml").exists():
    try:
        cases = []
        for case in ET.parse(work / "pytest_gpu.xml").getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (el.get("message") or el.text or "").strip().splitlines()
                    message = message[-1][:600] if message else ""
                    break
            cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                          "message": message})
        tests = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
        tests["cases"] = cases
    except ET.ParseError as e:
        tests = {"error": f"unreadable junit XML: {e}"}
out["tests"] = tests

HEAD_RETRIEVER = ["valid/ndcg@10", "test/ndcg@10", "valid/recall@10", "test/recall@10", "test/recall@100",
                  "train/fit_seconds", "train/epochs"]
HEAD_FUNNEL = ["valid/ndcg@10", "test/ndcg@10", "test/recall@10", "test/retrieval/ndcg@10", "test/ranked/ndcg@10",
               "valid/ranked/ndcg@10", "test/ranker/auc", "test/ranker/logloss", "test/final/ild@10",
               "test/ms_per_user_mean", "test/ms_per_user_p99", "ranker/fit_seconds", "ranker/epochs"]
for stage, head in (("retriever", HEAD_RETRIEVER), ("funnel", HEAD_FUNNEL)):
    metrics = load(work / "runs" / stage / "metrics.json")
    step = by_name.get(stage, {})
    out[stage] = {"status": step.get("status"), "seconds": step.get("seconds"), "run_dir": str(work / "runs" / stage),
                  "headline": {k: metrics.get(k) for k in head} if metrics else None, "metrics": metrics}

bench = load(work / "bench.json")
out["throughput"] = bench
summary = {}
if bench:
    for model in ("two_tower", "dlrm"):
        rows = [r for r in bench.get("train", []) if r.get("model") == model and "samples_per_s" in r]
        if rows:
            best = max(rows, key=lambda r: r["samples_per_s"])
            summary[f"{model}_best_samples_per_s"] = round(best["samples_per_s"])
            summary[f"{model}_best_at"] = {k: best.get(k) for k in ("batch_size", "interaction") if k in best}
            summary[f"{model}_meets_target"] = best["samples_per_s"] >= best["target_samples_per_s"]
    for r in bench.get("eval", []):
        if "users_per_s" in r:
            summary[f"eval_{r['eval']}_users_per_s"] = round(r["users_per_s"])
out["torchrec_backend"] = {"train_few_steps": {k: by_name.get("torchrec_train", {}).get(k) for k in ("status", "seconds", "error")},
                           "bench_few_steps": load(work / "bench_torchrec.json"),
                           "bench_step": {k: by_name.get("torchrec_bench", {}).get(k) for k in ("status", "seconds", "error")}}
out["steps"] = steps
counts = {s: sum(x["status"] == s for x in steps) for s in ("ok", "failed", "timeout", "skipped")}
summary.update({"steps": counts,
                "retriever_test_ndcg@10": (out["retriever"]["headline"] or {}).get("test/ndcg@10"),
                "funnel_test_ndcg@10": (out["funnel"]["headline"] or {}).get("test/ndcg@10")})
out["summary"] = summary
tmp = result.with_suffix(".json.tmp")
tmp.write_text(json.dumps(out, indent=2, default=str))
tmp.replace(result)
PYEOF
}

# ---- install -------------------------------------------------------------------------------------
do_install() {
  set -e
  local bundle=$ROOT/.gpu_bundle
  echo "data: $DATA_DIR"
  mkdir -p "$DATA_DIR/ml100k"
  for path in ml100k/tables ml-100k-recbole; do
    if [[ -e $DATA_DIR/$path ]]; then
      echo "  $DATA_DIR/$path already there"
    elif [[ -d $bundle/data/$path ]]; then
      cp -a "$bundle/data/$path" "$DATA_DIR/$path"; echo "  copied .gpu_bundle/data/$path"
    else
      echo "  MISSING: .gpu_bundle/data/$path (run scripts/gpu_bundle.sh here; carry .gpu_bundle)"
    fi
  done
  [[ -f $bundle/MANIFEST.txt ]] && { echo "bundle manifest:"; sed 's/^/  /' "$bundle/MANIFEST.txt"; }
  shopt -s nullglob
  local wheels=("$bundle"/wheels/*.whl) chosen=() present=()
  shopt -u nullglob
  if ((${#wheels[@]} == 0)); then
    echo "NO WHEELS in .gpu_bundle/wheels: torchrec, fbgemm-gpu-cpu, hydra-core, ... must already be installed"
  fi
  for whl in "${wheels[@]}"; do   # small typing helpers the image has: leave the image's version
    name=$(basename "$whl"); name=${name%%-*}
    if [[ $name =~ ^(pyre_extensions|typing_inspect|mypy_extensions)$ ]] \
       && "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null; then
      present+=("$(basename "$whl")")
    else
      chosen+=("$whl")
    fi
  done
  local target=(--target "$SITE")
  # dry run: install for the machine's interpreter and platform (checks the tags), into a scratch folder
  [[ $DRY == 1 ]] && target+=(--python-version 3.12 --implementation cp --only-binary=:all:
                              --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                              --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  if ((${#chosen[@]})); then
    echo "installing ${#chosen[@]} wheels into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check \
      "${target[@]}" "${chosen[@]}"
  fi
  echo "left to the image: ${present[*]:-none}"
  local editable=skipped
  if [[ $DRY == 1 ]]; then
    editable="skipped (dry run: the .venv has it)"
  elif "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check -e "$ROOT"; then
    editable=ok
  else
    editable="failed (src/ on PYTHONPATH instead)"
  fi
  echo "pip install -e .: $editable"
  "$PY" - "$WORK/install.json" "$editable" "${chosen[@]}" -- "${present[@]}" <<'PYEOF'
import json, os, sys
out, editable, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
cut = rest.index("--")
json.dump({"installed": [os.path.basename(w) for w in rest[:cut]], "left_to_image": rest[cut + 1:],
           "editable_install": editable, "pythonpath": os.environ.get("PYTHONPATH", "")}, open(out, "w"), indent=1)
PYEOF
}

do_env() {
  { nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"; } >"$WORK/nvidia_smi.txt"
  cat "$WORK/nvidia_smi.txt"
  "$PY" - "$WORK/env.json" "$WORK/nvidia_smi.txt" <<'PYEOF'
import importlib, importlib.metadata as md, json, platform, sys, traceback
out, smi = sys.argv[1], sys.argv[2]
env = {"python": platform.python_version(), "executable": sys.executable, "nvidia_smi_L": open(smi).read().strip()}
versions = {}
for dist in ("torch", "pytorch-lightning", "lightning", "torchmetrics", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu",
             "tensordict", "hydra-core", "omegaconf", "antlr4-python3-runtime", "faiss-cpu", "numpy", "pandas",
             "pyarrow", "rich", "tqdm", "pyre-extensions", "typing-inspect", "mypy-extensions", "recfunnel"):
    try:
        versions[dist] = md.version(dist)
    except md.PackageNotFoundError:
        versions[dist] = None
env["versions"] = versions
imports = {}
for mod in ("torch", "fbgemm_gpu", "torchrec", "tensordict", "hydra", "faiss", "pytorch_lightning", "recfunnel.runs"):
    try:
        m = importlib.import_module(mod)
        imports[mod] = {"ok": True, "file": getattr(m, "__file__", None)}
    except BaseException as e:  # noqa: BLE001 - what failed is the report
        imports[mod] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800],
                        "trace": traceback.format_exc().splitlines()[-6:]}
env["imports"] = imports
try:
    import torch
except ImportError:
    torch = None
env["torch_cuda"] = torch and torch.version.cuda
env["cuda_available"] = bool(torch and torch.cuda.is_available())
if env["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    env["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                     "multiprocessors": p.multi_processor_count, "bf16_supported": torch.cuda.is_bf16_supported()}
try:
    from recfunnel.features.embedding import fbgemm_ops_available
    env["fbgemm_ops_available_for_target_device"] = fbgemm_ops_available()
    env["fbgemm_cuda_kernel_registered"] = bool(torch._C._dispatch_has_kernel_for_dispatch_key(
        "fbgemm::asynchronous_complete_cumsum", "CUDA"))
except BaseException as e:  # noqa: BLE001
    env["fbgemm_ops_available_for_target_device"] = f"{type(e).__name__}: {e}"[:300]
json.dump(env, open(out, "w"), indent=1)
print(json.dumps({k: v for k, v in env.items() if k != "imports"}, indent=1))
bad = {k: v["error"] for k, v in imports.items() if not v["ok"]}
print("imports that FAILED:", json.dumps(bad, indent=1) if bad else "none")
sys.exit(1 if not imports["recfunnel.runs"]["ok"] else 0)
PYEOF
}

# ---- the steps -----------------------------------------------------------------------------------
say "gpu_check ($MODE) in $ROOT; work dir $WORK; result $RESULT; budget ${BUDGET}s"
export -f do_install do_env
run_step install 120 300 bash -c do_install
run_step env 90 280 bash -c do_env
ENV_OK=$(tail -n 1 "$STEPS" | "$PY" -c "import json, sys; print(json.loads(sys.stdin.read())['status'] == 'ok')")

PYTEST=("$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$WORK/pytest_gpu.xml" tests/test_gpu.py)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout=120)
RETRIEVER=("$PY" -m recfunnel.train experiment=ml100k_two_tower_full "${TRAINER[@]}" trainer.max_epochs=1
           trainer.enable_progress_bar=false model.net.backend=torch logger=csv seed=0
           "hydra.run.dir=$WORK/runs/retriever")
FUNNEL=("$PY" -m recfunnel.funnel experiment=ml100k_funnel "${TRAINER[@]}" trainer.max_epochs=1
        trainer.enable_progress_bar=false model.net.backend=torch logger=csv seed=0
        "retriever.run_dir=$WORK/runs/retriever" "hydra.run.dir=$WORK/runs/funnel" "${FUNNEL_EXTRA[@]}")
TORCHREC_TRAIN=("$PY" -m recfunnel.train experiment=ml100k_two_tower "${TRAINER[@]}" debug=fast logger=csv
                model.net.backend=torchrec "hydra.run.dir=$WORK/runs/torchrec")

if [[ $ENV_OK == True ]]; then
  run_step tests 150 250 "${PYTEST[@]}"
  run_step retriever 150 190 "${RETRIEVER[@]}"
  if [[ -f $WORK/runs/retriever/metrics.json && -d $WORK/runs/retriever/index ]]; then
    run_step funnel 180 100 "${FUNNEL[@]}"
  else
    skip_step funnel "no finished retriever run to reuse"
  fi
  run_step bench 150 40 "$PY" benchmarks/bench_gpu.py "${BENCH[@]}" --json "$WORK/bench.json"
  run_step torchrec_train 60 20 "${TORCHREC_TRAIN[@]}"
  run_step torchrec_bench 45 0 "$PY" benchmarks/bench_gpu.py "${BENCH_TR[@]}" --backend torchrec \
    --json "$WORK/bench_torchrec.json"
else
  for s in tests retriever funnel bench torchrec_train torchrec_bench; do
    skip_step "$s" "recfunnel does not import (see the env step: a wheel missing from .gpu_bundle?)"
  done
fi

assemble
[[ -n ${OUT:-} && -f $WORK/runs/funnel/funnel.md ]] && cp "$WORK/runs/funnel/funnel.md" "$OUT/funnel.md"
# a dry run leaves its runs and logs in the work dir, not the ~100 MB of rebuilt data and wheels
[[ $DRY == 1 && ${GPU_CHECK_KEEP_WORK:-0} != 1 ]] && rm -rf "$WORK/data" "$WORK/site"
say "gpu_check done in $(elapsed)s: $RESULT"
# exit 0 when the steps that must work did (install, env, retriever, funnel, bench); the gpu tests (whose
# torchrec cases may fail on fbgemm's CPU build) and the torchrec tries only inform: see the JSON
"$PY" - "$RESULT" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps(r["summary"], indent=1))
for s in r["steps"]:
    print(f"  {s['name']:15s} {s['status']:8s} {s['seconds']:7.1f}s  {s['error'][:150]}")
required = {"install", "env", "retriever", "funnel", "bench"}
sys.exit(0 if all(s["status"] == "ok" for s in r["steps"] if s["name"] in required) else 1)
PYEOF
