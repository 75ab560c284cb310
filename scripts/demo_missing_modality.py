"""Demo helper: segment held-out cases with all modalities and with some missing, then compare Dice.

``prepare`` writes two inference datalists for the test split of a BraTS-style datalist: one with every
modality, one with ``--drop`` modalities removed from each case. ``report`` scores the predictions of both
runs against the reference segmentations and prints Dice per region side by side.

    python scripts/demo_missing_modality.py prepare --datalist DATA/brats/datalist.json --out OUT --drop flair
    python scripts/demo_missing_modality.py report --datalist DATA/brats/datalist.json --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from brainmvp_components.datalist import load_datalist, write_datalist
from brainmvp_components.evaluation import evaluate_segmentation_files
from brainmvp_components.modalities import canonical_modality

RUNS = ("all_modalities", "missing_modalities")


def prepare(datalist: str, out: Path, drop: list[str], max_cases: int) -> None:
    cases = load_datalist(datalist, split="test")[:max_cases]
    drop = [canonical_modality(m) for m in drop]
    out.mkdir(parents=True, exist_ok=True)
    full = [{"case": c["case"], "image": c["image"], "modalities": c["modalities"]} for c in cases]
    reduced = []
    for case in full:
        kept = [(p, m) for p, m in zip(case["image"], case["modalities"]) if m not in drop]
        reduced.append({"case": case["case"], "image": [p for p, _ in kept], "modalities": [m for _, m in kept]})
    write_datalist(full, out / f"{RUNS[0]}.json")
    write_datalist(reduced, out / f"{RUNS[1]}.json")
    print(f"{len(full)} held-out case(s); the second run lacks {', '.join(drop)}")


def report(datalist: str, out: Path, convention: str) -> int:
    references = {c["case"]: c["label"] for c in load_datalist(datalist, split="test") if "label" in c}
    results = {}
    for run in RUNS:
        found = {case: out / run / f"{case}_seg.nii.gz" for case in references}
        found = {case: path for case, path in found.items() if path.is_file()}
        if not found:
            print(f"no predictions found under {out / run}", file=sys.stderr)
            return 1
        pairs = [(str(path), references[case]) for case, path in found.items()]
        rows = evaluate_segmentation_files(pairs, convention=convention, case_ids=list(found))
        results[run] = {row["case"]: row for row in rows}
    print(f"{'case':<22}{'run':<22}{'Dice TC':>9}{'Dice WT':>9}{'Dice ET':>9}")
    for case in sorted(results[RUNS[0]]):
        for run in RUNS:
            row = results[run].get(case)
            if row is not None:
                print(f"{case:<22}{run:<22}" + "".join(f"{row[f'Dice_{r}']:>9.3f}" for r in ("TC", "WT", "ET")))
    summary = {run: {r: sum(row[f"Dice_{r}"] for row in rows.values()) / len(rows) for r in ("TC", "WT", "ET")}
               for run, rows in results.items()}
    (out / "dice_summary.json").write_text(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("prepare", "report"))
    parser.add_argument("--datalist", required=True, help="datalist with a test split (prepare_datalist.py output)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the inference datalists and predictions")
    parser.add_argument("--drop", nargs="+", default=["flair"], help="modalities removed in the second run")
    parser.add_argument("--max-cases", type=int, default=2, help="held-out cases to segment")
    parser.add_argument("--label-convention", default="brats2021")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.datalist, args.out, args.drop, args.max_cases)
        return 0
    return report(args.datalist, args.out, args.label_convention)


if __name__ == "__main__":
    sys.exit(main())
