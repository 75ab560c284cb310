"""Label-efficiency study: pre-train, fine-tune at several amounts of labels and seeds, evaluate, plot.

For every initialisation of the study (``scratch``, ``mae``, ``brainmvp``, ``brainmvp-no-md``, ``brainmvp-no-cmr``,
``brainmvp-no-cl``) and seed, the pre-training bundle runs once with that initialisation's overrides; then, for
every label amount (a fraction of the training split, or a number of labelled cases) and encoder use (fine-tuned
or frozen), the segmentation bundle (or, with ``--task classification``, the classification bundle) trains from
the pre-trained encoder and evaluates its best model on the test split, and, in a study with sites, on the
out-of-site test split too. Every step is a ``python -m monai.bundle run``. Each finished training adds one row
per test split to ``OUT/<task>/results.csv``; the end of every invocation rewrites ``label_efficiency.png`` and
``results.md`` (mean ± standard deviation over seeds) beside it.

    python scripts/label_efficiency.py --config scripts/studies/cpu_small.yaml --workers 2
    python scripts/label_efficiency.py --config scripts/studies/label_efficiency_pool.yaml --workers 2
    python scripts/label_efficiency.py --config study.yaml --devices 0,1,2,3     # one GPU per worker
    python scripts/label_efficiency.py --config study.yaml --report-only         # figure and table only

Run it again and it skips what is finished: recorded fine-tunings and completed pre-trainings. A run that was
killed is started over in a clean folder (``continue_interrupted: true`` lets the bundles resume from their
checkpoints instead). Logs of every bundle run are in its folder (``train.log``, ``evaluate.log``,
``evaluate_out.log``). Exit status: 0 when every run finished, 1 when some failed, 2 for an unusable study file,
130 when interrupted. The runner is :mod:`brainmvp_components.studies.runner`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from brainmvp_components.studies.label_efficiency import TASKS
from brainmvp_components.studies.runner import run_study
from brainmvp_components.studies.scheduler import REPO_ROOT

DEFAULT_CONFIG = REPO_ROOT / "scripts" / "studies" / "default.yaml"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="study file, YAML or JSON (default %(default)s)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="study folder (default: the file's output_dir, relative to the current directory)",
    )
    parser.add_argument("--task", choices=sorted(TASKS), default=None, help="downstream task (default: the file's)")
    parser.add_argument("--workers", type=int, default=None, help="runs at a time (default: the file's)")
    parser.add_argument(
        "--devices", default=None, help="comma-separated CUDA devices, one per worker, e.g. 0,1 (default: the file's)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the runs still to do and their commands")
    parser.add_argument("--report-only", action="store_true", help="rewrite the figure and table from results.csv")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    devices = None if args.devices is None else [d.strip() for d in args.devices.split(",") if d.strip()]
    return run_study(
        args.config,
        output_dir=args.output_dir,
        task=args.task,
        workers=args.workers,
        devices=devices,
        dry_run=args.dry_run,
        report_only=args.report_only,
    )


if __name__ == "__main__":
    sys.exit(main())
