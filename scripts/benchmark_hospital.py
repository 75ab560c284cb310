"""Time the hospital-study path step by step on 4-series DICOM studies at 1 mm in-plane, against segmentation alone.

Example::

    python scripts/benchmark_hospital.py --cases 3

The command line of :mod:`brainmvp_components.benchmarks.hospital`, whose docstring says what is timed. Exit
status 1 when preprocessing misses its 60 s target.
"""

from __future__ import annotations

import argparse
import sys

from brainmvp_components.benchmarks.hospital import default_model_dir, run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="studies to time (the first pays one-off loading)")
    parser.add_argument("--seed", type=int, default=7, help="cohort seed of the embedded cases")
    parser.add_argument(
        "--model-dir", default=str(default_model_dir()), help="a trained segmentation bundle's models/ folder"
    )
    parser.add_argument(
        "--configs", default="inference.json,quick.json", help="the bundle configs the model was trained with"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cases < 1:
        print("--cases must be at least 1", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
