"""Sliding-window settings of the segmentation bundle, speed against Dice, on a trained model and labelled cases.

The command line of :mod:`brainmvp_components.benchmarks.window_settings`. Example, on the demo's model and held-out
cases (the demo trains with ``quick.json``)::

    python scripts/benchmark_window_settings.py --bundle-root demo_outputs/runs/seg \
        --datalist demo_outputs/data/brats/datalist.json \
        --extra-configs bundles/brainmvp_brats_seg/configs/quick.json --work-dir window_settings --repeats 2

Results and commands are recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import sys

from brainmvp_components.benchmarks.window_settings import main

if __name__ == "__main__":
    sys.exit(main())
