"""End-to-end inference of the segmentation bundle, NIfTI in to NIfTI out, for each runtime side by side.

The command line of :mod:`brainmvp_components.benchmarks.pipeline`, whose docstring describes what runs and what is
reported.

Examples::

    python scripts/benchmark_pipeline.py --work-dir /tmp/bench --repeats 2        # all variants, 1 mm volume
    python scripts/benchmark_pipeline.py --variants eager,openvino --cases 2     # two of them

Results and commands are recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import sys

from brainmvp_components.benchmarks.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
