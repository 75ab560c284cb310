#!/usr/bin/env bash
# CUDA check of the BrainMVP pre-training step at the authors' configuration and of the segmentation bundle's
# inference (eager, autocast, ONNX Runtime's CUDA provider, TensorRT where installed: time and Dice against
# float32's labels); scripts/gpu_check.py does the work.
#
#   bash scripts/gpu_check.sh [gpu_check.py options]      # e.g. --steps 5, --parts env matmul bf16 fp16
#   bash scripts/gpu_check.sh --prepare-wheels            # on a machine with an index: fetch the missing packages
#
# 1. environment: prints `python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available())'` and
#    nvidia-smi's view of the GPUs; stops (exit 2) without a torch that sees CUDA: a CUDA build of torch cannot be
#    installed on a machine without internet, so it must already be there (PYTHON names another interpreter);
# 2. this checkout is imported through PYTHONPATH (no install, no build); what the step imports and the machine
#    lacks (monai 1.6.1 and pytorch-ignite for the engine; einops and nibabel are installed too when missing) is
#    installed with --no-deps into a separate folder, from wheels in $GPU_CHECK_WHEELS when that folder holds
#    them (no index needed), else from the package index when pip reaches one; otherwise it stops (exit 3)
#    saying how to bring the wheels. `--prepare-wheels` fills that folder (pure-Python wheels, a few MB), so a
#    machine without internet can be handed the folder with the checkout: build/ is git-ignored, so name it in
#    the copy (for the device tool: carry ["build/gpu_check_wheels"]);
# 3. runs scripts/gpu_check.py "$@" under an overall time limit. Inside it each in-process part has its own limit
#    (--part-timeout, default 150 s) and torch.compile runs in a subprocess killed after --compile-budget (default
#    180 s); figures are printed as they come and the JSON ($OUT/gpu_check.json, else ./gpu_check.json) is
#    rewritten after every part, so a run cut short keeps what it measured.
#
# Environment: PYTHON            interpreter with a CUDA build of torch (default python3)
#              GPU_CHECK_WHEELS  folder of wheels to install from (default <repo>/build/gpu_check_wheels)
#              GPU_CHECK_SITE    folder the missing packages are installed into (default /tmp/gpu_check_site)
#              GPU_CHECK_TIMEOUT overall limit of gpu_check.py in seconds (default 420)
# Exit status: gpu_check.py's (0 all parts ran, 1 some part failed, 2 no CUDA), 3 when a package is missing,
# 124 when the overall limit was reached.
set -uo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-$REPO_ROOT/build/gpu_check_wheels}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
LIMIT="${GPU_CHECK_TIMEOUT:-420}"
# module name : what pip installs (pure-Python wheels; torch, numpy and packaging are taken from the machine)
PACKAGES=("monai:monai==1.6.1" "ignite:pytorch-ignite==0.5.5" "einops:einops" "nibabel:nibabel")
REQUIRED_MODULES="monai ignite"
export PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore
say() { echo "[gpu_check.sh] $*"; }

if [ "${1:-}" = "--prepare-wheels" ]; then
  mkdir -p "$WHEELS"
  specs=()
  for entry in "${PACKAGES[@]}"; do specs+=("${entry#*:}"); done
  "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "${specs[@]}" || exit 3
  say "wheels in $WHEELS:"; ls -1 "$WHEELS"
  exit 0
fi

# --- 1. torch and the GPU -----------------------------------------------------------------------------------
say "interpreter: $(command -v "$PY" || echo "$PY (not found)")"
if ! "$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available())'; then
  say "FAIL: $PY cannot import torch. This check needs an interpreter with a CUDA build of torch (set PYTHON=...);"
  say "      such a build cannot be downloaded on a machine without internet."
  exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv,noheader \
    | sed 's/^/[gpu_check.sh] nvidia-smi: /'
else
  say "nvidia-smi: not on the PATH"
fi

# --- 2. this checkout and the packages it imports --------------------------------------------------------------
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$SITE" ] && export PYTHONPATH="$PYTHONPATH:$SITE"
missing=()
for entry in "${PACKAGES[@]}"; do
  "$PY" -c "import ${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "missing: ${missing[*]}"
  pip_install=("$PY" -m pip install --quiet --no-deps --no-compile --disable-pip-version-check --target "$SITE")
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    say "installing them from the wheels in $WHEELS into $SITE"
    "${pip_install[@]}" --no-index --find-links "$WHEELS" "${missing[@]}" || say "some could not be installed from $WHEELS"
  else
    say "no wheels in $WHEELS; trying the package index (a few seconds when there is none)"
    timeout 180 "${pip_install[@]}" --retries 0 --timeout 5 "${missing[@]}" || say "they could not be installed from the package index"
  fi
  export PYTHONPATH="${PYTHONPATH%:$SITE}:$SITE"
fi
if ! "$PY" -c "import $(echo "$REQUIRED_MODULES" | tr ' ' ','), brainmvp_components.engines.pretrain" ; then
  say "FAIL: the pre-training step cannot be imported (needs: ${PACKAGES[*]%%:*}, of which monai and ignite are"
  say "      required). On a machine without internet bring them as wheels: on a machine with an index run"
  say "      'bash scripts/gpu_check.sh --prepare-wheels' (fills $WHEELS) and copy that folder along."
  exit 3
fi
"$PY" -c 'import monai, ignite; print(f"[gpu_check.sh] monai {monai.__version__}, pytorch-ignite {ignite.__version__}")'

# --- 3. the check ----------------------------------------------------------------------------------------------
say "running scripts/gpu_check.py $* (overall limit ${LIMIT} s)"
timeout --kill-after=15 "$LIMIT" "$PY" "$REPO_ROOT/scripts/gpu_check.py" "$@"
status=$?
[ "$status" -eq 124 ] && say "gpu_check.py ran past ${LIMIT} s and was stopped; the JSON holds the parts that finished"
exit "$status"
