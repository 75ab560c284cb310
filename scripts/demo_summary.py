"""Demo helper: stage timings and the end-of-demo summary of what the bundles learned.

``record-seconds`` adds one stage's wall time to a JSON file (atomically); ``write`` gathers the pre-training,
segmentation and classification reports under ``--runs`` into ``OUT/summary.json``
(:func:`brainmvp_components.metrics.learning_report.build_learning_summary`) and prints it as a table of figures and
targets (:data:`~brainmvp_components.metrics.learning_report.TARGETS`, the one place they are pinned). Exit status:
0 when the summary was written, 1 when a report is missing, 3 when ``--require-targets`` is given and a target is
missed (the summary is written first).

    python scripts/demo_summary.py record-seconds --file OUT/seconds.json --stage pretrain --seconds 180
    python scripts/demo_summary.py write --out OUT --runs OUT/runs --seconds OUT/seconds.json --total 840 \
        --seed 0 --require-targets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from brainmvp_components.metrics.learning_report import build_learning_summary, seeds_table, summary_table
from brainmvp_components.utils.writers import write_json


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what} report {path} does not exist (did that stage run?)")
    return json.loads(path.read_text())


def record_seconds(file: Path, stage: str, seconds: float) -> None:
    times = json.loads(file.read_text()) if file.is_file() else {}
    times[stage] = float(seconds)
    write_json(file, times)


def write_summary(
    out: Path,
    runs: Path,
    seconds_file: Path,
    total: float | None,
    seed: int | None = None,
    require_targets: bool = False,
) -> int:
    try:
        pretrain = _read(runs / "pretrain" / "eval" / "metrics.json", "pre-training evaluation")
        dice = _read(runs / "seg" / "demo" / "dice_summary.json", "segmentation Dice")
        cls = _read(runs / "cls" / "eval" / "metrics.json", "classification evaluation")
    except FileNotFoundError as err:
        print(f"summary not written: {err}", file=sys.stderr)
        return 1
    seconds = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}
    if total is not None:
        seconds["total"] = float(total)
    cases = dice.get("cases", {}).get("all_modalities")
    summary = build_learning_summary(pretrain, dice, cls, seconds, seg_cases=None if cases is None else len(cases))
    if seed is not None:
        summary["seed"] = int(seed)
    path = write_json(out / "summary.json", summary)
    print(summary_table(summary))
    print(f"summary: {path}")
    missed = [key for key, result in summary["targets"].items() if not result["met"]]
    if require_targets and missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser("record-seconds", help="add one stage's wall time to a JSON file")
    record.add_argument("--file", required=True, type=Path)
    record.add_argument("--stage", required=True)
    record.add_argument("--seconds", required=True, type=float)
    write = commands.add_parser("write", help="write OUT/summary.json and print it")
    write.add_argument("--out", required=True, type=Path, help="demo output folder")
    write.add_argument("--runs", required=True, type=Path, help="folder of the bundle runs (pretrain, seg, cls)")
    write.add_argument("--seconds", required=True, type=Path, help="the stage timings written by record-seconds")
    write.add_argument("--total", type=float, default=None, help="wall time of the whole demo")
    write.add_argument("--seed", type=int, default=None, help="the seed of the run (recorded in the summary)")
    write.add_argument("--require-targets", action="store_true", help="exit with status 3 when a target is missed")
    seeds = commands.add_parser("seeds", help="the figures of several demo runs side by side, mean and spread")
    seeds.add_argument("outs", nargs="+", type=Path, help="demo output folders, each holding summary.json")
    args = parser.parse_args(argv)
    if args.command == "seeds":
        summaries = {}
        for out in args.outs:
            summary = _read(out / "summary.json", "demo summary")
            summaries[summary.get("seed", str(out))] = summary
        print(seeds_table(summaries))
        return 0
    if args.command == "record-seconds":
        record_seconds(args.file, args.stage, args.seconds)
        return 0
    return write_summary(args.out, args.runs, args.seconds, args.total, args.seed, args.require_targets)


if __name__ == "__main__":
    sys.exit(main())
