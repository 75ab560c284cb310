"""Linear probe of frozen encoders: how much of a tumour segmentation their features hold, read out linearly.

Each encoder (a pre-training's single-channel ``encoder.pt``, or ``random`` for a randomly initialised one of the
same size) embeds each modality of a case; a logistic regression per BraTS region is fitted on voxels of the
labelled cases and scored by Dice on whole test cases (:mod:`brainmvp_components.studies.probe`). ``intensities``
probes the four image intensities alone.

    python scripts/probe_encoder.py --datalist DATA/brats/datalist_labelled2.json \
        --encoder random --encoder mae=PRETRAIN/mae/seed0/models/encoder.pt \
        --encoder brainmvp=PRETRAIN/brainmvp/seed0/models/encoder.pt --splits test test_out --out probe.csv

Rows (encoder, seed, test split, Dice per region and their mean) are appended to ``--out`` (CSV) and printed.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from brainmvp_components.studies.probe import load_probe_cases, load_single_channel_encoder, probe_encoders


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, required=True, help="datalist whose training split is labelled")
    parser.add_argument(
        "--encoder",
        action="append",
        required=True,
        help="NAME=PATH of a single-channel encoder.pt, 'random' (a random encoder per seed) or 'intensities'",
    )
    parser.add_argument("--splits", nargs="+", default=["test"], help="test splits of the datalist to score")
    parser.add_argument("--preset", default="tiny", help="UniFormer size of the encoders (default %(default)s)")
    parser.add_argument("--spacing", type=float, default=2.0, help="grid spacing in mm (default %(default)s)")
    parser.add_argument("--roi", type=int, default=32, help="sliding-window side of the feature extraction")
    parser.add_argument("--per-class", type=int, default=4000, help="sampled voxels per class and labelled case")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the voxel sampling (and random encoders)")
    parser.add_argument("--out", type=Path, default=None, help="CSV to append the rows to")
    return parser.parse_args(argv)


@torch.no_grad()
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spacing = (args.spacing,) * 3
    training = load_probe_cases(args.datalist, "training", spacing=spacing)
    tests = {split: load_probe_cases(args.datalist, split, spacing=spacing) for split in args.splits}
    rows = []
    for seed in range(args.seeds):
        encoders = {}
        for item in args.encoder:
            name, _, path = item.partition("=")
            if name == "intensities":
                encoders[name] = None
            elif name == "random" and not path:
                encoders[name] = load_single_channel_encoder(None, args.preset, seed=seed)
            else:
                encoders[name] = load_single_channel_encoder(path, args.preset)
        start = time.monotonic()
        for row in probe_encoders(
            encoders, training, tests, per_class=args.per_class, seed=seed, roi_size=(args.roi,) * 3
        ):
            row = {"seed": seed, "labelled": len(training), **row}
            rows.append(row)
            print(
                f"{row['encoder']:>12} seed {seed} {row['test_split']:>9}: Dice TC {row['dice_tc']:.3f} "
                f"WT {row['dice_wt']:.3f} ET {row['dice_et']:.3f} mean {row['dice_mean']:.3f}",
                flush=True,
            )
        print(f"seed {seed} probed in {time.monotonic() - start:.0f} s", flush=True)
    if args.out is not None:
        new = not args.out.is_file()
        with open(args.out, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
