"""Peak memory of a pre-training epoch against the number of subjects, for each data-set caching mode.

Example::

    python scripts/benchmark_data_scale.py --subjects 16 64 256 --cache disk memory

The command line of :mod:`brainmvp_components.benchmarks.data_scale`, whose docstring describes the cohorts, the
runs and the figures.
"""

from __future__ import annotations

import argparse
import sys

from brainmvp_components.benchmarks.data_scale import run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[16, 64, 256], help="cohort sizes")
    parser.add_argument("--cache", nargs="+", choices=("disk", "memory", "none"), default=["disk", "memory"])
    parser.add_argument("--base-subjects", type=int, default=16, help="distinct generated subjects")
    parser.add_argument("--spacing", type=float, default=2.0, help="cohort grid spacing in mm")
    parser.add_argument("--workdir", help="keep cohorts and runs in a new folder under this one (default: removed)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: further bundle overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
