"""Time the embedded cohort generator: seconds per subject for each kind (files written, no previews).

Example::

    python scripts/benchmark_cohort.py --subjects 4 --spacing 2

The one-off loading of the MNI maps is timed separately and excluded from the per-subject figures. Wall
time depends on what else the machine runs; CPU time (this process) is the steadier figure.
"""

from __future__ import annotations

import argparse
import tempfile

from brainmvp_components.benchmarks.harness import Timer
from brainmvp_components.data.cohort import load_mni_tissue_maps, make_cohort


def run(args: argparse.Namespace) -> int:
    """Time every kind of ``args`` (``scripts/benchmark_cohort.py``'s arguments, ``subjects`` at least 1)."""
    with Timer() as timer:
        load_mni_tissue_maps()
    print(f"MNI maps loaded and prepared once: {timer.wall:.2f} s")
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as tmp:
            with Timer() as timer:
                make_cohort(tmp, kind, args.subjects, seed=args.seed, spacing=args.spacing)
            elapsed, cpu = timer.wall, timer.cpu
        print(
            f"{kind:9s} {args.spacing:g} mm: {elapsed / args.subjects:.2f} s/subject wall, "
            f"{cpu / args.subjects:.2f} s/subject CPU ({args.subjects} subjects)"
        )
    return 0
