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
# kind, subjects, validation and test fractions (pre-training uses every case)
for spec in "pretrain 8 0 0" "brats 10 0.2 0.2" "adni 40 0.2 0.2"; do
  set -- $spec
  if [ ! -f "$DATA/$1/datalist.json" ]; then
    python scripts/make_cohort.py --out "$DATA/$1" --kind "$1" --subjects "$2" --seed 0 --spacing 2 --preview
    python scripts/prepare_datalist.py --data-dir "$DATA/$1" --out "$DATA/$1/datalist.json" \
      --val-fraction "$3" --test-fraction "$4" --seed 0
  fi
  echo "$1: $(ls -d "$DATA/$1"/*/ | wc -l) cases, previews in $DATA/$1/.previews/"
done

PRETRAIN=bundles/brainmvp_pretrain
SEG=bundles/brainmvp_brats_seg
CLS=bundles/brainmvp_adni_cls
RUNS="$OUT/runs"
run_bundle() {  # run_bundle BUNDLE_DIR "config files" ARGS...
  local bundle="$1" configs="$2"; shift 2
  python -m monai.bundle run --config_file "$configs" --meta_file "$bundle/configs/metadata.json" "$@"
}

stage "2/4 pre-training (quick settings: tiny UniFormer, 32^3 crops at 2 mm)"
run_bundle "$PRETRAIN" "['$PRETRAIN/configs/train.json','$PRETRAIN/configs/quick.json']" \
  --bundle_root "$RUNS/pretrain" --dataset_dir "$DATA/pretrain" --epochs "${DEMO_PRETRAIN_EPOCHS:-20}" --learning_rate 0.002 \
  --template_warmup_epochs 5 --contrastive_start_epoch 10 --preview_interval 10
echo "encoder: $RUNS/pretrain/models/encoder.pt"
echo "distilled templates: $RUNS/pretrain/models/templates/ (templates.png)"
echo "reconstruction previews: $RUNS/pretrain/eval/previews/"

stage "3/4 segmentation: fine-tune from the pre-trained encoder, then segment held-out cases"
run_bundle "$SEG" "['$SEG/configs/train.json','$SEG/configs/quick.json']" \
  --bundle_root "$RUNS/seg" --dataset_dir "$DATA/brats" \
  --pretrained_encoder "$RUNS/pretrain/models/encoder.pt" --templates_dir "$RUNS/pretrain/models/templates" \
  --max_epochs "${DEMO_SEG_EPOCHS:-40}" --epoch_length 8 --val_interval 20 --learning_rate 0.001
python scripts/demo_missing_modality.py prepare --datalist "$DATA/brats/datalist.json" --out "$RUNS/seg/demo" \
  --drop flair --max-cases 2
for run in all_modalities missing_modalities; do
  run_bundle "$SEG" "['$SEG/configs/inference.json','$SEG/configs/quick.json']" --bundle_root "$RUNS/seg" \
    --datalist "$RUNS/seg/demo/$run.json" --output_dir "$RUNS/seg/demo/$run" --save_overlay true
done
python scripts/demo_missing_modality.py report --datalist "$DATA/brats/datalist.json" --out "$RUNS/seg/demo"
echo "predictions and overlays: $RUNS/seg/demo/{all_modalities,missing_modalities}/"

stage "4/4 classification: fine-tune the pre-trained encoder (AD vs CN), evaluate on the test split"
run_bundle "$CLS" "['$CLS/configs/train.json','$CLS/configs/quick.json']" \
  --bundle_root "$RUNS/cls" --dataset_dir "$DATA/adni" --pretrained_encoder "$RUNS/pretrain/models/encoder.pt" \
  --templates_dir "$RUNS/pretrain/models/templates" --max_epochs "${DEMO_CLS_EPOCHS:-60}" --epoch_length 12 \
  --val_interval 10 --learning_rate 0.001 --roi_size "[48,48,48]" --block_fill_ratio "[0.0,0.2]"
run_bundle "$CLS" "['$CLS/configs/train.json','$CLS/configs/quick.json','$CLS/configs/evaluate.json']" \
  --bundle_root "$RUNS/cls" --dataset_dir "$DATA/adni" --roi_size "[48,48,48]"
python - "$RUNS/cls/eval/metrics.json" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
print("classification on the test split:", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
PY

stage "done"
echo "all outputs are under $OUT"
