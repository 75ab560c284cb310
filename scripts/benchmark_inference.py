"""Benchmark whole-volume sliding-window inference of the BraTS segmentation bundle, side by side.

The command line of :mod:`brainmvp_components.benchmarks.inference`, whose docstring describes the configurations
(ours and its variants, the authors' network with ``--authors-repo``, the model-zoo SegResNet) and the figures.

Examples::

    python scripts/benchmark_inference.py --windows 8
    python scripts/benchmark_inference.py --windows 8 --authors-repo /path/to/BrainMVP \\
        --variants fp32,bundle,sw_batch,channels_last,bf16,large_window --json inference.json
    python scripts/benchmark_inference.py --volume 4,64,64,48 --roi 32 --preset tiny --windows 1 \\
        --segresnet-roi 64,64,48 --large-roi 64 --variants fp32,channels_last

Results and commands are recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if importlib.util.find_spec("brainmvp_components") is None:  # run from an environment without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainmvp_components.benchmarks.inference import (  # noqa: E402
    AUTHORS_INFERER,
    DEFAULT_VARIANTS,
    FULL_VOLUME,
    MODIFIERS,
    SEGRESNET_INFERER,
    parse_variant,
    run,
)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", type=_ints, default=list(FULL_VOLUME), help="C,H,W,D of the random volume")
    parser.add_argument("--preset", choices=("small", "tiny"), default="small", help="our UniFormer size")
    parser.add_argument("--roi", type=int, default=AUTHORS_INFERER["roi"], help="window side (ours and the authors')")
    parser.add_argument("--overlap", type=float, default=AUTHORS_INFERER["overlap"])
    parser.add_argument(
        "--windows", type=int, default=8, help="windows run through the network, in whole sw batches (0: all)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards of one window batch first")
    parser.add_argument(
        "--variants",
        type=lambda text: [v for v in text.split(",") if v],
        default=DEFAULT_VARIANTS.split(","),
        help=f"comma-separated; each fp32 or '+'-joined modifiers of {', '.join(MODIFIERS)} "
        f"(default {DEFAULT_VARIANTS})",
    )
    parser.add_argument("--sw-batch", type=int, default=4, help="windows per forward of the sw_batch modifier")
    parser.add_argument("--large-roi", type=int, default=128, help="window side of the large_window modifier")
    parser.add_argument("--large-overlap", type=float, default=0.25, help="overlap of the large_window modifier")
    parser.add_argument(
        "--segresnet-roi",
        type=_ints,
        default=list(SEGRESNET_INFERER["roi"]),
        help="window of the model-zoo SegResNet (its bundle: 240,240,160)",
    )
    parser.add_argument("--no-segresnet", dest="segresnet", action="store_false", help="skip the SegResNet row")
    parser.add_argument(
        "--authors-repo",
        metavar="PATH",
        help="a checkout of the authors' BrainMVP repository (shaohao011/BrainMVP): also run their Downstream "
        "UniUnet with their inference function, imported from PATH",
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all configurations, interleaved")
    parser.add_argument("--compare-windows", type=int, default=2, help="window outputs kept for the comparisons")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--rss-limit-gb", type=float, default=14.0, help="abort a CPU configuration above this RSS (0: no limit)"
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH")
    args = parser.parse_args(argv)
    if len(args.volume) != 4 or len(args.segresnet_roi) != 3:
        parser.error("--volume takes C,H,W,D and --segresnet-roi three sides")
    try:
        for name in args.variants:
            parse_variant(name)
    except ValueError as error:
        parser.error(str(error))
    if len(set(args.variants)) != len(args.variants):
        parser.error("--variants: a variant is named twice")
    if args.authors_repo:
        downstream = os.path.join(args.authors_repo, "Downstream")
        if not all(os.path.isfile(os.path.join(downstream, f)) for f in ("model/Uni_unet.py", "train_utils.py")):
            parser.error(
                f"--authors-repo {args.authors_repo}: not a checkout of the authors' BrainMVP repository "
                "(no Downstream/model/Uni_unet.py and Downstream/train_utils.py there)"
            )
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
