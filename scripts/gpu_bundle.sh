#!/usr/bin/env bash
# Prepare what the GPU check (scripts/gpu_check.sh) needs to carry to a lent GPU machine, in the
# git-ignored folder .gpu_bundle/ (add `/.gpu_bundle/` to .gitignore or .git/info/exclude):
#
#   .gpu_bundle/wheels/   cp312 / manylinux x86_64 (or pure-Python) wheels of what the machine's
#                         image lacks: torchrec + fbgemm-gpu-cpu of the pairing for its torch 2.11,
#                         hydra-core, omegaconf, antlr4-python3-runtime, tensordict (+ pyvers),
#                         faiss-cpu (recfunnel.runs imports the FAISS index), and pyre-extensions,
#                         typing-inspect, mypy-extensions (the image has these; installed only if not)
#   .gpu_bundle/data/     the ML-100K canonical tables (data/ml100k/tables) and the RecBole copy of
#                         the raw files (data/ml-100k-recbole), so nothing is fetched there; the
#                         feature stores (data/ml100k/features, ~35 MB) are rebuilt on the machine
#   .gpu_bundle/MANIFEST.txt   what was fetched, what failed, sizes
#
# Run here (needs the PyPI mirror), from the repo root, after `make install` (for the data):
#
#   bash scripts/gpu_bundle.sh            # idempotent: wheels already present are kept
#   FRESH=1 bash scripts/gpu_bundle.sh    # start from an empty .gpu_bundle/
#
# Then on the device tool:  run(command="bash scripts/gpu_check.sh", carry=[".gpu_bundle"], timeout_s=560)
#
# Pairing (torch 2.11 on the machine): FBGEMM's release table maps FBGEMM 1.6.0 to PyTorch 2.11.x, and
# TorchRec's v1.6.0 release cut is "in sync with FBGEMM v1.6.0 and PyTorch 2.11"; the index serves
# torchrec 1.6.1 (a patch of that line), so: fbgemm-gpu-cpu 1.6.0 + torchrec 1.6.1. Override with
# FBGEMM_VERSION=... TORCHREC_VERSION=... . A wheel that cannot be fetched is reported (here and in
# MANIFEST.txt) and the bundle is still made; gpu_check.sh then records the import failure. Note that
# torchrec cannot be left out: recfunnel imports KeyedJaggedTensor from it even with the pure-torch
# embedding backend (model.net.backend=torch), which is what lets the check run on fbgemm's CPU build.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
BUNDLE=$ROOT/.gpu_bundle
PY=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PY ]] || PY=python3
LIMIT_MIB=64            # what one device call may carry in all (working tree + carried paths)
WARN_MIB=48             # keep well under it

TORCHREC_VERSION=${TORCHREC_VERSION:-1.6.1}
FBGEMM_VERSION=${FBGEMM_VERSION:-1.6.0}
WHEELS=(
  "torchrec==$TORCHREC_VERSION"
  "fbgemm-gpu-cpu==$FBGEMM_VERSION"
  "hydra-core==1.3.8"
  "omegaconf==2.3.1"
  "antlr4-python3-runtime==4.9.3"   # sdist only on PyPI: built here into a pure-Python wheel
  "tensordict==0.15.3"              # pure Python, needs torch>=2.11
  "pyvers==0.2.3"                   # tensordict's
  "faiss-cpu==1.15.1"               # abi3 wheel, ~19 MB: recfunnel.serving.index imports faiss
  "pyre-extensions==0.0.32"
  "typing-inspect==0.9.0"
  "mypy-extensions==1.2.0"
)
# what pip matches for the machine: CPython 3.12 on x86-64 Linux (glibc tags listed explicitly: pip
# matches each manylinux_2_N exactly), plus pure-Python wheels
PLATFORM_ARGS=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
               --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
               --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
               --platform manylinux1_x86_64 --platform any)

[[ "${FRESH:-0}" == 1 ]] && rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/wheels" "$BUNDLE/data"
LOG=$BUNDLE/pip.log
: >"$LOG"
failed=()
fetched=()

mib() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {printf "%.1f", s / 1048576}'; }

# The distribution name as it appears in a wheel's file name (PEP 427: - and . become _).
wheel_stem() { local name=${1%%==*}; name=${name//-/_}; echo "${name//./_}"; }

have_wheel() {  # a wheel of this name and version already in the bundle
  local stem version
  stem=$(wheel_stem "$1"); version=${1#*==}
  compgen -G "$BUNDLE/wheels/${stem}-${version}-*.whl" >/dev/null \
    || compgen -G "$BUNDLE/wheels/${stem,,}-${version}-*.whl" >/dev/null
}

echo "== checking that pip download works here"
probe=$(mktemp -d)
if ! timeout 180 "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$probe" "mypy-extensions==1.2.0" >>"$LOG" 2>&1; then
  echo "!! pip download does not work here (see $LOG): no wheels can be bundled."
  echo "   The GPU check needs torchrec, fbgemm-gpu-cpu, hydra-core, omegaconf, antlr4, tensordict, faiss-cpu"
  echo "   on the machine; without them it records the import failure and stops early."
  PIP_OK=0
else
  PIP_OK=1
fi
rm -rf "$probe"

if [[ $PIP_OK == 1 ]]; then
  echo "== wheels for CPython 3.12 / manylinux x86_64 into $BUNDLE/wheels"
  for spec in "${WHEELS[@]}"; do
    if have_wheel "$spec"; then
      echo "   kept     $spec"; fetched+=("$spec"); continue
    fi
    if timeout 300 "$PY" -m pip download --no-deps --only-binary=:all: "${PLATFORM_ARGS[@]}" \
         -d "$BUNDLE/wheels" "$spec" >>"$LOG" 2>&1; then
      echo "   fetched  $spec"; fetched+=("$spec"); continue
    fi
    # no binary wheel for the machine: build one here from the sdist, kept only if it is pure Python
    tmp=$(mktemp -d)
    if timeout 300 "$PY" -m pip wheel -q --no-deps -w "$tmp" "$spec" >>"$LOG" 2>&1 \
         && compgen -G "$tmp/*-none-any.whl" >/dev/null; then
      mv "$tmp"/*-none-any.whl "$BUNDLE/wheels/"
      echo "   built    $spec (pure-Python wheel from the sdist)"; fetched+=("$spec")
    else
      echo "!! FAILED   $spec: no cp312 manylinux x86_64 wheel, and no pure-Python wheel could be built (see $LOG)"
      failed+=("$spec")
    fi
    rm -rf "$tmp"
  done
  # two versions of one package would stop the install there: keep only the pinned ones
  for whl in "$BUNDLE"/wheels/*.whl; do
    [[ -e $whl ]] || continue
    base=$(basename "$whl"); keep=0
    for spec in "${WHEELS[@]}"; do
      stem=$(wheel_stem "$spec"); version=${spec#*==}
      shopt -s nocasematch
      [[ $base == "${stem}-${version}-"* ]] && keep=1
      shopt -u nocasematch
    done
    [[ $keep == 1 ]] || { echo "   removed  $base (not pinned above)"; rm -f "$whl"; }
  done
fi

echo "== ML-100K data into $BUNDLE/data"
if [[ ! -f data/ml100k/tables/interactions.parquet || ! -f data/ml-100k-recbole/ml-100k.inter ]]; then
  echo "   data/ml100k/tables or data/ml-100k-recbole missing: python -m recfunnel.data.prepare data=ml100k"
  "$PY" -m recfunnel.data.prepare data=ml100k >>"$LOG" 2>&1 || echo "!! prepare failed (see $LOG)"
fi
data_ok=1
for path in data/ml100k/tables data/ml-100k-recbole; do
  if [[ -d $path ]]; then
    rm -rf "${BUNDLE:?}/$path"; mkdir -p "$BUNDLE/$(dirname "$path")"
    cp -a "$path" "$BUNDLE/$path"
    echo "   copied   $path ($(mib "$path") MiB)"
  else
    echo "!! FAILED   $path is missing: the check will try to fetch ML-100K there, and cannot"
    data_ok=0
  fi
done

# sizes: what one device call carries (this bundle + the working tree that travels anyway)
# (the bundle itself left out: once ignored it travels only as a carried path)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | grep -zv '^\.gpu_bundle/' \
             | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s + 0}')
tree_mib=$(awk -v b="${tree_bytes:-0}" 'BEGIN {printf "%.1f", b / 1048576}')
bundle_mib=$(mib "$BUNDLE")
total_mib=$(awk -v a="$bundle_mib" -v b="$tree_mib" 'BEGIN {printf "%.1f", a + b}')
{
  echo "# .gpu_bundle made by scripts/gpu_bundle.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# pins: torchrec $TORCHREC_VERSION, fbgemm-gpu-cpu $FBGEMM_VERSION (torch 2.11 on the machine)"
  echo "wheels:"
  for whl in "$BUNDLE"/wheels/*.whl; do [[ -e $whl ]] && printf "  %8s MiB  %s\n" "$(mib "$whl")" "$(basename "$whl")"; done
  echo "data:"
  for path in data/ml100k/tables data/ml-100k-recbole; do
    [[ -d $BUNDLE/$path ]] && printf "  %8s MiB  %s\n" "$(mib "$BUNDLE/$path")" "$path"
  done
  echo "failed: ${failed[*]:-none}"
  echo "totals: wheels $(mib "$BUNDLE/wheels") MiB, data $(mib "$BUNDLE/data") MiB, bundle $bundle_mib MiB," \
       "working tree $tree_mib MiB, carried in all $total_mib MiB of $LIMIT_MIB MiB"
} >"$BUNDLE/MANIFEST.txt"
echo
cat "$BUNDLE/MANIFEST.txt"

status=0
if ! git check-ignore -q .gpu_bundle; then
  echo "!! .gpu_bundle/ is not git-ignored: add the line /.gpu_bundle/ to .gitignore (or .git/info/exclude),"
  echo "   or it travels as untracked files and could be committed by mistake"
fi
if awk -v t="$total_mib" -v w="$WARN_MIB" 'BEGIN {exit !(t > w)}'; then
  echo "!! the carried total, $total_mib MiB, is above $WARN_MIB MiB (limit $LIMIT_MIB MiB): drop something"
  status=1
fi
if ((${#failed[@]})) || [[ $PIP_OK == 0 || $data_ok == 0 ]]; then
  echo "!! the bundle is INCOMPLETE (failed: ${failed[*]:-none}; pip ok: $PIP_OK; data ok: $data_ok)."
  echo "   gpu_check.sh still runs and records what it could not import."
  status=1
else
  echo "bundle complete. Device call: run(command=\"bash scripts/gpu_check.sh\", carry=[\".gpu_bundle\"], timeout_s=560)"
fi
exit $status
