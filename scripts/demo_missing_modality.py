"""Demo helper: segment held-out cases with all modalities and with some missing, then compare Dice.

``prepare`` writes two inference datalists for the test split of a BraTS-style datalist: one with every
modality, one with ``--drop`` modalities removed from each case. ``report`` scores the predictions of both
runs against the reference segmentations, prints Dice per region side by side, writes the means over the cases
to ``dice_summary.json`` and, per case, the reference and both predictions at the slice with the most tumour
(``<case>_comparison.png``).

    python scripts/demo_missing_modality.py prepare --datalist DATA/brats/datalist.json --out OUT --drop flair
    python scripts/demo_missing_modality.py report --datalist DATA/brats/datalist.json --out OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from brainmvp_components.data.datalist import load_datalist, write_datalist
from brainmvp_components.data.modalities import canonical_modality
from brainmvp_components.metrics.segmentation import evaluate_segmentation_files
from brainmvp_components.utils.writers import write_json
from brainmvp_components.visualize.previews import save_segmentation_comparison

RUNS = ("all_modalities", "missing_modalities")


def prepare(datalist: str, out: Path, drop: list[str], max_cases: int | None) -> None:
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


def _load(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def report(datalist: str, out: Path, convention: str, show: str = "flair") -> int:
    cases = {c["case"]: c for c in load_datalist(datalist, split="test") if "label" in c}
    results = {}
    for run in RUNS:
        found = {case: out / run / f"{case}_seg.nii.gz" for case in cases}
        found = {case: path for case, path in found.items() if path.is_file()}
        if not found:
            print(f"no predictions found under {out / run}", file=sys.stderr)
            return 1
        pairs = [(str(path), cases[case]["label"]) for case, path in found.items()]
        rows = evaluate_segmentation_files(pairs, convention=convention, case_ids=list(found))
        results[run] = {row["case"]: row for row in rows}
    print(f"{'case':<22}{'run':<22}{'Dice TC':>9}{'Dice WT':>9}{'Dice ET':>9}")
    for case in sorted(results[RUNS[0]]):
        for run in RUNS:
            row = results[run].get(case)
            if row is not None:
                print(f"{case:<22}{run:<22}" + "".join(f"{row[f'Dice_{r}']:>9.3f}" for r in ("TC", "WT", "ET")))
        entry = cases[case]
        shown = show if show in entry["modalities"] else entry["modalities"][0]
        figure = save_segmentation_comparison(
            _load(entry["image"][entry["modalities"].index(shown)]),
            _load(entry["label"]),
            {run.replace("_", " "): _load(out / run / f"{case}_seg.nii.gz") for run in RUNS},
            out / f"{case}_comparison.png",
            title=f"{case}: reference and predictions over {shown}",
        )
        print(f"  overlay: {figure}")
    summary = {
        run: {r.lower(): sum(row[f"Dice_{r}"] for row in rows.values()) / len(rows) for r in ("TC", "WT", "ET")}
        for run, rows in results.items()
    }
    summary["cases"] = {run: sorted(rows) for run, rows in results.items()}
    write_json(out / "dice_summary.json", summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("prepare", "report"))
    parser.add_argument("--datalist", required=True, help="datalist with a test split (prepare_datalist.py output)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the inference datalists and predictions")
    parser.add_argument("--drop", nargs="+", default=["flair"], help="modalities removed in the second run")
    parser.add_argument(
        "--max-cases", type=int, default=None, help="held-out cases to segment (default: all of the test split)"
    )
    parser.add_argument("--label-convention", default="brats2021")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.datalist, args.out, args.drop, args.max_cases)
        return 0
    return report(args.datalist, args.out, args.label_convention)


if __name__ == "__main__":
    sys.exit(main())
