#!/usr/bin/env bash
# MONAI Label serves bundles/brainmvp_brats_seg unmodified with the stock `monaibundle` sample app: no app code.
#
#   bash scripts/monailabel_check.sh
#
# 1. builds MONAI Label in its own virtual environment (not the project's .venv): MONAI Label 0.8.5 with numpy < 2
#    and pydicom < 3, torch 2.14.1 with torchvision 0.29.1 (pinned together), MONAI 1.6.1 and this project;
# 2. copies the `monaibundle` sample app out of the installed MONAI Label package;
# 3. trains the segmentation bundle briefly with quick.json on a generated cohort (stand-in templates, no
#    pre-trained encoder), packages it with scripts/package_bundle.py (without it, monailabel_check.py bake) so
#    that inference.json and train.json alone load the weights, and puts it in the app's model folder together
#    with the training run's checkpoints (which the requests must not resume);
# 4. starts `monailabel start_server` on localhost with a studies folder of 4-D BraTS-style images and labels, and
#    checks with curl: /info/ lists the model; /infer/ returns a label on the input's grid identical to
#    `python -m monai.bundle run` with inference.json; two successive /train/ requests each train, each updates
#    models/model.pt, and use the distilled templates.
# Prints PASS or FAIL per check and exits non-zero when one fails; the server is stopped on exit.
#
# Environment: BRAINMVP_MONAILABEL_ENV   the virtual environment (default ~/.cache/brainmvp/monailabel-env)
#              BRAINMVP_MONAILABEL_WORK  work folder (default: a new temporary folder, removed when all checks pass)
#              BRAINMVP_MONAILABEL_PORT  server port on 127.0.0.1 (default 8765)
#              PYTHON                    the interpreter that creates the environment (default python3)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ML_ENV="${BRAINMVP_MONAILABEL_ENV:-$HOME/.cache/brainmvp/monailabel-env}"
PORT="${BRAINMVP_MONAILABEL_PORT:-8765}"
MODEL=brainmvp_brats_seg
URL="http://127.0.0.1:$PORT"
# torch and torchvision are installed together at these exact versions so that no other build is pulled in
PINS=(torch==2.14.1 torchvision==0.29.1 monailabel==0.8.5 "numpy<2" "pydicom<3")

export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONUNBUFFERED=1

failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# --- 1. the environment ---------------------------------------------------------------------------------------
stamp="$ML_ENV/.brainmvp-monailabel"
digest="$(printf '%s\n' "${PINS[@]}" | cat - "$REPO_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  echo "[monailabel] installing MONAI Label into $ML_ENV"
  [ -x "$ML_ENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$ML_ENV"
  "$ML_ENV/bin/python" -m pip install --quiet "${PINS[@]}" -e "$REPO_ROOT"
  echo "$digest" > "$stamp"
fi
PY="$ML_ENV/bin/python"
# this checkout's package, whichever checkout the environment was first installed from
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
# the `monailabel` command is a shell script that runs the first `python` on the PATH
export PATH="$ML_ENV/bin:$PATH"
"$PY" -c "import monai, monailabel, torch; print(f'[monailabel] MONAI Label {monailabel.__version__}, MONAI {monai.__version__}, torch {torch.__version__}')"

# --- 2.-3. the app, the data and the bundle -------------------------------------------------------------------
if [ -n "${BRAINMVP_MONAILABEL_WORK:-}" ]; then
  WORK="$BRAINMVP_MONAILABEL_WORK"
  mkdir -p "$WORK"
else
  WORK="$(mktemp -d -t brainmvp-monailabel.XXXXXX)"
fi
WORK="$(cd "$WORK" && pwd)"
APP="$WORK/apps/monaibundle"
STUDIES="$WORK/studies"
LOG="$WORK/server.log"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    # the server runs in its own process group (setsid): its training subprocesses stop with it
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
}
finish() {
  local status=$?
  stop_server
  if [ "$failures" -gt 0 ] || [ "$status" -ne 0 ]; then
    echo "[monailabel] work folder kept for inspection: $WORK"
  elif [ -z "${BRAINMVP_MONAILABEL_WORK:-}" ]; then
    rm -rf "$WORK"
  fi
}
trap finish EXIT

rm -rf "$WORK/apps" "$STUDIES" "$WORK/trained" "$WORK/packaged" "$WORK/reference"
"$ML_ENV/bin/monailabel" apps --download --name monaibundle --output "$WORK/apps" > /dev/null
[ -f "$APP/main.py" ] || { echo "FAIL: the monaibundle sample app was not copied to $APP"; exit 1; }

cd "$REPO_ROOT"
if [ ! -d "$WORK/cohort" ]; then
  "$PY" scripts/make_cohort.py --out "$WORK/cohort" --kind brats --subjects 6 --spacing 2
fi
[ -d "$WORK/templates" ] || "$PY" scripts/monailabel_check.py templates --out "$WORK/templates" --spacing 2

echo "[monailabel] training the segmentation bundle briefly (quick.json)"
TRAINED="$WORK/trained/$MODEL"
mkdir -p "$TRAINED"
cp -r bundles/$MODEL/configs bundles/$MODEL/docs bundles/$MODEL/LICENSE "$TRAINED/"
"$PY" -m monai.bundle run --bundle_root "$TRAINED" --meta_file "$TRAINED/configs/metadata.json" \
  --config_file "['$TRAINED/configs/train.json','$TRAINED/configs/quick.json']" \
  --dataset_dir "$WORK/cohort" --templates_dir "$WORK/templates" > "$WORK/train.log" 2>&1 \
  || { tail -30 "$WORK/train.log"; echo "FAIL: the bundle did not train"; exit 1; }

PACKAGED="$WORK/packaged/$MODEL"
if [ -f scripts/package_bundle.py ]; then
  "$PY" scripts/package_bundle.py --bundle "bundles/$MODEL" --trained "$TRAINED" --out "$WORK/packaged" \
    --url_base "http://127.0.0.1/$MODEL" \
    --config_file "bundles/$MODEL/configs/train.json" "bundles/$MODEL/configs/quick.json" > "$WORK/package.log" 2>&1 \
    || { tail -30 "$WORK/package.log"; echo "FAIL: scripts/package_bundle.py did not package the bundle"; exit 1; }
  echo "[monailabel] packaged with scripts/package_bundle.py"
else
  "$PY" scripts/monailabel_check.py bake --trained "$TRAINED" --out "$PACKAGED"
  echo "[monailabel] packaged with quick.json's settings written into train.json and inference.json"
fi
mkdir -p "$APP/model"
cp -r "$PACKAGED" "$APP/model/$MODEL"
MODEL_PT="$APP/model/$MODEL/models/model.pt"
# the training run's checkpoints go along, as in a bundle folder that was trained in place: MONAI Label's
# requests must not resume them (they fine-tune from model.pt, a run of their own)
cp -r "$TRAINED/models/checkpoints" "$APP/model/$MODEL/models/checkpoints"

read -r -a cases <<< "$("$PY" scripts/monailabel_check.py studies --cohort "$WORK/cohort" --out "$STUDIES" --cases 5)"
CASE="${cases[0]}"

echo "[monailabel] reference: python -m monai.bundle run with inference.json on $CASE"
printf '{"testing": [{"image": "%s", "case": "%s"}]}\n' "$STUDIES/$CASE.nii.gz" "$CASE" > "$WORK/reference.json"
"$PY" -m monai.bundle run --bundle_root "$PACKAGED" --config_file "$PACKAGED/configs/inference.json" \
  --datalist "$WORK/reference.json" --output_dir "$WORK/reference" > "$WORK/reference.log" 2>&1 \
  || { tail -30 "$WORK/reference.log"; echo "FAIL: monai.bundle run inference failed"; exit 1; }

# --- 4. the server and the checks -----------------------------------------------------------------------------
echo "[monailabel] starting the server on $URL"
setsid "$ML_ENV/bin/monailabel" start_server --app "$APP" --studies "$STUDIES" --host 127.0.0.1 --port "$PORT" \
  --conf models "$MODEL" --conf zoo_source github --conf preload false --conf sam2 false > "$LOG" 2>&1 &
server_pid=$!
for _ in $(seq 180); do
  curl -sf "$URL/info/" -o "$WORK/info.json" && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 2
done

if "$PY" -c "import json, sys; sys.exit(0 if '$MODEL' in json.load(open('$WORK/info.json'))['models'] else 1)" \
  2>/dev/null; then
  pass "/info/ lists $MODEL"
else
  fail "/info/ does not list $MODEL (server log: $LOG)"
  tail -40 "$LOG"
  exit 1
fi

code=$(curl -s -o "$WORK/infer.nii.gz" -w '%{http_code}' -X POST \
  "$URL/infer/$MODEL?image=$CASE&output=image" -F 'params={"device": "cpu"}' --max-time 900 || true)
if [ "$code" = "200" ] && "$PY" scripts/monailabel_check.py compare --label "$WORK/infer.nii.gz" \
  --reference "$WORK/reference/${CASE}_seg.nii.gz" --image "$STUDIES/$CASE.nii.gz"; then
  pass "/infer/$MODEL returns a label on the input's grid, identical to monai.bundle run"
else
  fail "/infer/$MODEL (HTTP $code; server log: $LOG)"
  head -c 2000 "$WORK/infer.nii.gz" | tr -cd '[:print:]\n' | head -20; echo
fi

train_once() {  # $1: request number; checks that the request trained, updated model.pt and used the templates
  local before after lines_before
  before=$("$PY" scripts/monailabel_check.py digest --file "$MODEL_PT")
  lines_before=$(wc -l < "$LOG")
  code=$(curl -s -o "$WORK/train$1.json" -w '%{http_code}' -X POST "$URL/train/$MODEL?run_sync=true" \
    -H 'Content-Type: application/json' \
    -d '{"max_epochs": 1, "val_split": 0.2, "device": "cpu", "multi_gpu": false}' --max-time 1500 || true)
  tail -n +"$((lines_before + 1))" "$LOG" > "$WORK/train$1.log"
  after=$("$PY" scripts/monailabel_check.py digest --file "$MODEL_PT")
  if [ "$code" = "200" ] && grep -q "Epoch\[1\] Complete" "$WORK/train$1.log" \
    && grep -q "saved the best model so far" "$WORK/train$1.log" \
    && grep -q "belong to another run" "$WORK/train$1.log" && ! grep -q "resumed from" "$WORK/train$1.log"; then
    pass "/train/ request $1 trained (HTTP 200, the earlier run's checkpoints set aside, an epoch completed," \
      "a best model was saved)"
  else
    fail "/train/ request $1 (HTTP $code; its log: $WORK/train$1.log)"
    grep -E "Error|error|Traceback|WARNING" "$WORK/train$1.log" | tail -15 || true
  fi
  if [ "$before" != "$after" ]; then
    pass "/train/ request $1 updated models/model.pt"
  else
    fail "/train/ request $1 left models/model.pt unchanged"
  fi
  if grep -q "loaded frozen modality templates" "$WORK/train$1.log" \
    && ! grep -q "template augmentation is off" "$WORK/train$1.log"; then
    pass "/train/ request $1 loaded the distilled templates for template augmentation"
  else
    fail "/train/ request $1 did not use the templates"
    grep -i "template" "$WORK/train$1.log" | tail -5 || true
  fi
}
train_once 1
train_once 2

if [ "$failures" -gt 0 ]; then
  echo "[monailabel] $failures check(s) failed"
  exit 1
fi
echo "[monailabel] all checks passed"
