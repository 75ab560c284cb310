"""Time the embedded cohort generator: seconds per subject for each kind (files written, no previews).

Example::

    python scripts/benchmark_cohort.py --subjects 4 --spacing 2

The one-off loading of the MNI maps is timed separately and excluded from the per-subject figures. Wall
time depends on what else the machine runs; CPU time (this process) is the steadier figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from brainmvp_components.data.cohort import COHORT_KINDS, load_mni_tissue_maps, make_cohort


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
    start = time.perf_counter()
    load_mni_tissue_maps()
    print(f"MNI maps loaded and prepared once: {time.perf_counter() - start:.2f} s")
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as tmp:
            start, start_cpu = time.perf_counter(), time.process_time()
            make_cohort(tmp, kind, args.subjects, seed=args.seed, spacing=args.spacing)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        print(
            f"{kind:9s} {args.spacing:g} mm: {elapsed / args.subjects:.2f} s/subject wall, "
            f"{cpu / args.subjects:.2f} s/subject CPU ({args.subjects} subjects)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
