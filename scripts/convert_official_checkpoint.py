"""Convert the authors' BrainMVP checkpoint into this project's weight files.

Usage::

    python scripts/convert_official_checkpoint.py --in BrainMVP_uniformer.pt --out models/brainmvp_uniformer
    python scripts/convert_official_checkpoint.py --in BrainMVP_unet.pt --out models/brainmvp_unet

The variant is told by the file's keys, which are checked against the authors' structure first (no hash is
published). Writes ``encoder.pt`` (the UniFormer-S or the UNet variant's ``ResUNetEncoder`` state dict, for the
downstream bundles), ``model.pt`` (the pre-training model's state dict) and
``templates/template_<modality>.nii.gz`` (the distilled modality templates).
"""

from __future__ import annotations

import argparse
import logging
import sys

from brainmvp_components.weights.official import (
    CheckpointFormatError,
    check_official_structure,
    convert_official_checkpoint,
    read_state_dict,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--in", dest="checkpoint", required=True, help="the authors' BrainMVP_uniformer.pt or BrainMVP_unet.pt"
    )
    parser.add_argument("--out", dest="out_dir", required=True, help="output folder")
    parser.add_argument("--head-dim", type=int, default=64, help="attention head width (64 for the release)")
    parser.add_argument(
        "--skip-structure-check",
        action="store_true",
        help="convert a file in the authors' layout but of another size (the released sizes are checked by default)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if not args.skip_structure_check:
            check_official_structure(read_state_dict(args.checkpoint), args.checkpoint)
        written = convert_official_checkpoint(args.checkpoint, args.out_dir, head_dim=args.head_dim)
    except (FileNotFoundError, CheckpointFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
