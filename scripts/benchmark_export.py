"""Time one sliding window of the segmentation network: eager PyTorch, ONNX Runtime and OpenVINO, side by side.

The command line of :mod:`brainmvp_components.benchmarks.export`, whose docstring describes what runs and what is
reported.

Examples::

    python scripts/benchmark_export.py --preset tiny --repeats 5            # quick.json's network, 32^3 window
    python scripts/benchmark_export.py --preset small --repeats 2           # the bundle's network, 96^3 window

Results and commands are recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

if importlib.util.find_spec("brainmvp_components") is None:  # run from an environment without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainmvp_components.benchmarks.export import PRESET_CONFIGS, run, table  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESET_CONFIGS), default="tiny", help="UniFormer size")
    parser.add_argument("--roi", type=int, default=None, help="window side (default: the configs' roi_size)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every backend")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over the backends, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or (args.roi is not None and (args.roi < 16 or args.roi % 16)):
        parser.error("--threads and --repeats must be positive, --roi a multiple of 16")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(preset=args.preset, roi=args.roi, threads=args.threads, repeats=args.repeats, seed=args.seed)
    print(f"settings: {json.dumps(result['settings'])}; onnx_export took {result['export_s']:.1f} s")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
