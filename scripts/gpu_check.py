"""CUDA check of the BrainMVP pre-training step at the authors' configuration, for a lent GPU machine.

The command line of :mod:`brainmvp_components.benchmarks.gpu_check`, whose docstring describes the parts
(``env``, ``matmul``, ``fp32``, ``tf32``, ``bf16``, ``fp16``, ``checkpoint``, ``nccl``, ``compile``) and their figures.

Examples::

    bash scripts/gpu_check.sh                                   # environment check, then this script
    python scripts/gpu_check.py --steps 5
    python scripts/gpu_check.py --parts matmul bf16 fp16 --batch 2
    python scripts/gpu_check.py --dry-run-cpu                   # no GPU: one tiny fp32 step on CPU, same code

Exit status: 0 when every part ran, 1 when some part failed, 2 when no CUDA device is visible (without
``--dry-run-cpu``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("brainmvp_components") is None:  # run from an environment without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainmvp_components.benchmarks.gpu_check import PARTS, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (env always)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per part (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per part")
    parser.add_argument("--preset", choices=("small", "tiny"), default=None, help="UniFormer size (train.json's)")
    parser.add_argument("--roi", type=int, default=None, help="crop side (train.json's: 96)")
    parser.add_argument("--batch", type=int, default=None, help="cases per step (train.json's: 3)")
    parser.add_argument("--modalities", type=int, default=None, help="targets per case (train.json's: 4)")
    parser.add_argument("--matmul-size", type=int, default=8192, help="matmul side for the rate measurement")
    parser.add_argument("--part-timeout", type=float, default=150.0, help="seconds per in-process part (0: none)")
    parser.add_argument("--compile-budget", type=float, default=180.0, help="seconds for the compile subprocess")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's)")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark on (the bundle leaves it off)"
    )
    parser.add_argument("--json", default=None, help="results file (default: $OUT/gpu_check.json or ./gpu_check.json)")
    parser.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="no GPU needed: preset tiny, 32^3, 1 case x 2 targets, one fp32 step per part on CPU through the same "
        "code (parts env, matmul, fp32, checkpoint, nccl over gloo, compile with the eager backend)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
