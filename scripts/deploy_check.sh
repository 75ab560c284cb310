#!/usr/bin/env bash
# The MONAI Deploy application deploy/brainmvp_seg_app on a small exported DICOM study, run as the SDK runs it.
#
#   bash scripts/deploy_check.sh
#
# 1. builds MONAI Deploy App SDK 4.0.0 in its own virtual environment (not the project's .venv): the SDK with its
#    Holoscan runtime (which runs on the CPU when no GPU is there), torch 2.13.0, MONAI 1.6.1 with nibabel and itk,
#    pydicom 3.0.2, highdicom 0.28.2, the project's requirements.txt and this project (about 3.8 GB);
# 2. exports a small DICOM study (the test protocol of tests/test_hospital_study.py: 2 mm, t2 and FLAIR on 5 mm
#    slices, moved, skull on) and assembles a trained bundle from the shipped test model (tests/data/hospital_model,
#    trained with quick.json);
# 3. runs `python -m brainmvp_seg_app -i STUDY -o OUT -m BUNDLE`, and `python -m monai.bundle run` with
#    inference_clinical.json (the HospitalStudySegmenter path) on the same study;
# 4. checks: the application exits 0; its labels equal the bundle run's voxel for voxel; its QC record (reference
#    t1c, no flags, the series identified by the selection rules) and qc.csv; one DICOM SEG, readable by highdicom,
#    with the three BraTS segments, on the t1c series, decoding to the labels; and a study with two t2 series
#    makes the application exit non-zero with the one-line reason in qc.csv.
# Prints PASS or FAIL per check and exits non-zero when one fails.
#
# Environment: BRAINMVP_DEPLOY_ENV   the virtual environment (default ~/.cache/brainmvp/deploy-env)
#              BRAINMVP_DEPLOY_WORK  work folder (default: a new temporary folder, removed when all checks pass)
#              PYTHON                the interpreter that creates the environment (default python3)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY_ENV="${BRAINMVP_DEPLOY_ENV:-$HOME/.cache/brainmvp/deploy-env}"
MODEL=brainmvp_brats_seg
PINS=(torch==2.13.0 "monai[nibabel,itk]==1.6.1" pydicom==3.0.2 highdicom==0.28.2 monai-deploy-app-sdk==4.0.0)

export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONUNBUFFERED=1

failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# --- 1. the environment ---------------------------------------------------------------------------------------
stamp="$DEPLOY_ENV/.brainmvp-deploy"
digest="$(printf '%s\n' "${PINS[@]}" | cat - "$REPO_ROOT/requirements.txt" "$REPO_ROOT/pyproject.toml" | sha256sum \
  | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  echo "[deploy] installing MONAI Deploy App SDK into $DEPLOY_ENV"
  [ -x "$DEPLOY_ENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$DEPLOY_ENV"
  "$DEPLOY_ENV/bin/python" -m pip install --quiet "${PINS[@]}" -r "$REPO_ROOT/requirements.txt" -e "$REPO_ROOT"
  echo "$digest" > "$stamp"
fi
PY="$DEPLOY_ENV/bin/python"
# this checkout's package and application, whichever checkout the environment was first installed from
export PYTHONPATH="$REPO_ROOT:$REPO_ROOT/deploy${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import monai, monai.deploy, holoscan, torch; print(f'[deploy] MONAI Deploy App SDK \
{monai.deploy.__version__}, Holoscan {holoscan.__version__}, MONAI {monai.__version__}, torch {torch.__version__}')"
echo "[deploy] environment size: $(du -sh "$DEPLOY_ENV" | cut -f1)"

# --- 2. the study and the bundle ------------------------------------------------------------------------------
if [ -n "${BRAINMVP_DEPLOY_WORK:-}" ]; then
  WORK="$BRAINMVP_DEPLOY_WORK"
  mkdir -p "$WORK"
else
  WORK="$(mktemp -d -t brainmvp-deploy.XXXXXX)"
fi
WORK="$(cd "$WORK" && pwd)"
finish() {
  local status=$?
  if [ "$failures" -gt 0 ] || [ "$status" -ne 0 ]; then
    echo "[deploy] work folder kept for inspection: $WORK"
  elif [ -z "${BRAINMVP_DEPLOY_WORK:-}" ]; then
    rm -rf "$WORK"
  fi
}
trap finish EXIT

cd "$REPO_ROOT"
rm -rf "$WORK/studies" "$WORK/twice" "$WORK/app_out" "$WORK/twice_out" "$WORK/reference"
STUDY="$("$PY" scripts/deploy_check.py study --out "$WORK/studies")"
BUNDLE="$("$PY" scripts/deploy_check.py bundle --model tests/data/hospital_model --out "$WORK/bundle/$MODEL")"
CONFIGS=inference.json,quick.json,inference_clinical.json  # the test model was trained with quick.json

# --- 3. the application and the reference ---------------------------------------------------------------------
echo "[deploy] python -m brainmvp_seg_app on $(basename "$STUDY")"
start=$(date +%s)
if BRAINMVP_CONFIGS="$CONFIGS" "$PY" -m brainmvp_seg_app -i "$STUDY" -o "$WORK/app_out" -m "$BUNDLE" \
  > "$WORK/app.log" 2>&1; then
  pass "the application ran ($(($(date +%s) - start)) s; log: $WORK/app.log)"
else
  fail "the application exited with status $? (log: $WORK/app.log)"
  grep -E "error|Error|Traceback" "$WORK/app.log" | tail -15 || true
  exit 1
fi

echo "[deploy] reference: python -m monai.bundle run with inference_clinical.json on the same study"
C="$BUNDLE/configs"
"$PY" -m monai.bundle run --bundle_root "$BUNDLE" --meta_file "$C/metadata.json" \
  --config_file "['$C/inference.json','$C/quick.json','$C/inference_clinical.json']" \
  --dataset_dir "$WORK/studies" --output_dir "$WORK/reference" > "$WORK/reference.log" 2>&1 \
  || { tail -30 "$WORK/reference.log"; echo "FAIL: monai.bundle run on the study failed"; exit 1; }

# --- 4. the checks --------------------------------------------------------------------------------------------
if "$PY" scripts/deploy_check.py compare --app "$WORK/app_out" --reference "$WORK/reference" --study "$STUDY"; then
  :
else
  failures=$((failures + 1))
fi

"$PY" scripts/deploy_check.py twice --study "$STUDY" --out "$WORK/twice" > /dev/null
if BRAINMVP_CONFIGS="$CONFIGS" "$PY" -m brainmvp_seg_app -i "$WORK/twice" -o "$WORK/twice_out" -m "$BUNDLE" \
  > "$WORK/twice.log" 2>&1; then
  fail "a study with two t2 series was segmented (log: $WORK/twice.log)"
elif grep -q "two series are selected as t2" "$WORK/twice_out/qc.csv" 2>/dev/null \
  && grep -q "hospital studies: 1 case(s), 0 segmented, 0 flagged, 1 failed" "$WORK/twice.log"; then
  pass "a study with two t2 series fails with the reason in qc.csv and the run's summary line"
else
  fail "a study with two t2 series failed without its reason (log: $WORK/twice.log)"
  tail -5 "$WORK/twice.log"
fi

if [ "$failures" -gt 0 ]; then
  echo "[deploy] $failures check(s) failed"
  exit 1
fi
echo "[deploy] all checks passed"
