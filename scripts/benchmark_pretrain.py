"""Benchmark the BrainMVP pre-training building blocks and one full training step.

The command line of :mod:`brainmvp_components.benchmarks.pretrain_step`, whose docstring describes both parts
(``masking``, ``step``) and the authors' step of ``--authors-repo``.

Examples::

    python scripts/benchmark_pretrain.py --part masking
    python scripts/benchmark_pretrain.py --part step --preset tiny --roi 64 --batch 1 --modalities 2
    python scripts/benchmark_pretrain.py --part step --preset small --roi 96 --batch 1 --modalities 2 \\
        --precision fp32 --steps 0 --authors-repo /path/to/BrainMVP

Results and the exact commands used are recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

if importlib.util.find_spec("brainmvp_components") is None:  # run from an environment without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainmvp_components.benchmarks.pretrain_step import AUTHORS_ROI, run  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("masking", "step", "all"), default="all")
    group = parser.add_argument_group("masking")
    group.add_argument("--mask-batch", type=int, default=4, help="cases")
    group.add_argument("--mask-modalities", type=int, default=4, help="single-modality volumes per case")
    group.add_argument("--mask-roi", type=int, default=96, help="crop side")
    group.add_argument("--block-size", type=int, default=8)
    group.add_argument("--mask-ratio", type=float, default=0.8)
    group.add_argument("--loop-repeats", type=int, default=2, help="timed runs of the per-block loop (best kept)")
    group = parser.add_argument_group("training step")
    group.add_argument("--preset", choices=("small", "tiny"), default="small", help="UniFormer size")
    group.add_argument("--roi", type=int, default=96, help="crop side")
    group.add_argument("--batch", type=int, default=2, help="cases per step")
    group.add_argument("--modalities", type=int, default=4, help="single-modality targets per case")
    group.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    group.add_argument(
        "--use-checkpoint", action="store_true", help="activation checkpointing in the encoder (ours only)"
    )
    group.add_argument(
        "--steps",
        type=int,
        default=1,
        help="timed steps after a warm-up step (0: time the first step itself, for heavy configurations)",
    )
    group.add_argument(
        "--variants",
        nargs="+",
        choices=("baseline", "ours"),
        default=["baseline", "ours"],
        help="baseline: per-block loop masking, two forward passes, default AdamW, no checkpointing; "
        "ours: the engine's step, fused AdamW",
    )
    group.add_argument(
        "--authors-repo",
        metavar="PATH",
        help="a checkout of the authors' BrainMVP repository (shaohao011/BrainMVP): also run their own pre-training "
        "step (variant 'authors', fp32, 96^3) imported from PATH, and print the ratios ours / authors",
    )
    group.add_argument(
        "--authors-batch",
        type=int,
        default=2,
        help="cases per authors' step, 2 views each (2 = 4 views = ours at --batch 1 --modalities 2)",
    )
    group.add_argument(
        "--authors-detect-anomaly",
        action="store_true",
        help="autograd anomaly detection in the authors' step, as their main.py switches it on (off by default)",
    )
    group.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    group.add_argument("--rss-limit-gb", type=float, default=14.0, help="abort a CPU configuration above this RSS")
    group.add_argument("--peak-size", type=int, default=4096, help="matmul side for the peak measurement")
    args = parser.parse_args(argv)
    if args.authors_repo:
        if not os.path.isfile(os.path.join(args.authors_repo, "models", "Uniformer.py")):
            parser.error(
                f"--authors-repo {args.authors_repo}: not a checkout of the authors' BrainMVP repository "
                "(no models/Uniformer.py there)"
            )
        if args.roi != AUTHORS_ROI:
            parser.error(
                f"--authors-repo needs --roi {AUTHORS_ROI}: the authors' step crops {AUTHORS_ROI}^3 (hard-coded)"
            )
    return args


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
