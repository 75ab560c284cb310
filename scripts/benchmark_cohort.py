"""Time the embedded cohort generator: seconds per subject for each kind (files written, no previews).

Example::

    python scripts/benchmark_cohort.py --subjects 4 --spacing 2

The command line of :mod:`brainmvp_components.benchmarks.cohort`, whose docstring says what is timed.
"""

from __future__ import annotations

import argparse
import sys

from brainmvp_components.benchmarks.cohort import run
from brainmvp_components.data.cohort import COHORT_KINDS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=4, help="subjects per kind")
    parser.add_argument("--spacing", type=float, default=2.0, help="grid spacing in mm")
    parser.add_argument("--kinds", nargs="+", default=list(COHORT_KINDS), choices=COHORT_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.subjects < 1:
        print("--subjects must be at least 1", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
