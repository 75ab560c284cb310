"""Dice of the exported segmentation model (ONNX Runtime, OpenVINO) against eager PyTorch's on labelled cases.

The command line of :mod:`brainmvp_components.benchmarks.exported_agreement`. Example, on the demo's model and
held-out cases (the demo trains with ``quick.json``)::

    python scripts/check_exported.py --bundle-root demo_outputs/runs/seg \
        --datalist demo_outputs/data/brats/datalist.json \
        --extra-configs bundles/brainmvp_brats_seg/configs/quick.json --work-dir exported_check

Exits 1 when a runtime's mean Dice differs from eager's by more than ``--tolerance`` in any region.
"""

from __future__ import annotations

import sys

from brainmvp_components.benchmarks.exported_agreement import main

if __name__ == "__main__":
    sys.exit(main())
