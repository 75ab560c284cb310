#!/usr/bin/env bash
# The main job on the embedded data, end to end on a CPU:
#   1. build the embedded cohorts (pre-training, BraTS-style segmentation, ADNI-style classification),
#      write and verify their datalists, and write preview images;
#   2. pre-train BrainMVP (quick settings) and export the distilled templates and a reconstruction preview;
#   3. fine-tune the segmentation bundle from the pre-trained encoder, segment a held-out case with and
#      without a missing modality, print Dice per region and write overlays;
#   4. fine-tune the classification bundle and print its metrics.
# Outputs go to demo_outputs/ (override with DEMO_OUT=DIR).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
source scripts/setup_env.sh requirements.txt
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
OUT="${DEMO_OUT:-$REPO_ROOT/demo_outputs}"
DATA="$OUT/data"
mkdir -p "$DATA"
start=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - start )) s] $*"; }

stage "1/4 embedded cohorts, datalists and previews"
for spec in "pretrain 8" "brats 10" "adni 16"; do
  set -- $spec
  if [ ! -f "$DATA/$1/datalist.json" ]; then
    python scripts/make_cohort.py --out "$DATA/$1" --kind "$1" --subjects "$2" --seed 0 --spacing 2 --preview
    python scripts/prepare_datalist.py --data-dir "$DATA/$1" --out "$DATA/$1/datalist.json" \
      --val-fraction 0.2 --test-fraction 0.2 --seed 0
  fi
done
