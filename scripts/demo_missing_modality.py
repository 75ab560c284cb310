"""Demo helper: segment held-out cases with all modalities and with each modality missing in turn, then compare.

``prepare`` writes two inference datalists for the test split of a BraTS-style datalist: ``all_modalities.json``
with every modality, and ``missing_each.json`` with one entry per case and ``--drop`` modality, that modality
removed (the entry of case ``C`` without ``t2`` is named ``C__no_t2``). The bundle then runs once on the first and
once per fill (templates, zeros, the case's mean: ``--missing_fill``) on the second, each into the folder of that
name. ``report`` scores every prediction against the reference segmentation, prints Dice per region, writes the
means over the cases to ``dice_summary.json`` (``{"all_modalities": {region: Dice}, "missing": {fill: {modality:
{region: Dice}}}, "cases": ...}``) and, per case, the reference and the template-filled predictions at the slice
with the most tumour (``<case>_comparison.png``).

    python scripts/demo_missing_modality.py prepare --datalist DATA/brats/datalist.json --out OUT
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
from brainmvp_components.metrics.learning_report import MISSING_FILLS, TEMPLATE_MODALITIES
from brainmvp_components.metrics.segmentation import evaluate_segmentation_files
from brainmvp_components.utils.writers import write_json
from brainmvp_components.visualize.previews import save_segmentation_comparison

ALL = "all_modalities"
MISSING_DATALIST = "missing_each"
REGIONS = ("TC", "WT", "ET")


def missing_case(case: str, modality: str) -> str:
    """The name of ``case``'s entry without ``modality``."""
    return f"{case}__no_{modality}"


def prepare(datalist: str, out: Path, drop: list[str], max_cases: int | None) -> None:
    cases = load_datalist(datalist, split="test")[:max_cases]
    drop = [canonical_modality(m) for m in drop]
    out.mkdir(parents=True, exist_ok=True)
    full = [{"case": c["case"], "image": c["image"], "modalities": c["modalities"]} for c in cases]
    reduced = []
    for case in full:
        for dropped in drop:
            kept = [(p, m) for p, m in zip(case["image"], case["modalities"]) if m != dropped]
            if len(kept) == len(case["image"]):
                raise ValueError(f"{case['case']} has no {dropped} to remove (it has {case['modalities']})")
            reduced.append(
                {
                    "case": missing_case(case["case"], dropped),
                    "image": [p for p, _ in kept],
                    "modalities": [m for _, m in kept],
                }
            )
    write_datalist(full, out / f"{ALL}.json")
    write_datalist(reduced, out / f"{MISSING_DATALIST}.json")
    print(f"{len(full)} held-out case(s), each also without {', '.join(drop)} in turn ({len(reduced)} entries)")


def _load(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _score(folder: Path, entries: dict[str, str]) -> dict[str, dict]:
    """``{entry: Dice row}`` for the entries (``{entry: reference label file}``) predicted under ``folder``."""
    found = {name: folder / f"{name}_seg.nii.gz" for name in entries}
    absent = [name for name, path in found.items() if not path.is_file()]
    if absent:
        raise FileNotFoundError(f"no prediction under {folder} for {', '.join(absent)}")
    pairs = [(str(path), entries[name]) for name, path in found.items()]
    return {row["case"]: row for row in evaluate_segmentation_files(pairs, case_ids=list(found))}


def _mean(rows) -> dict[str, float]:
    rows = list(rows)
    return {r.lower(): float(np.mean([row[f"Dice_{r}"] for row in rows])) for r in REGIONS}


def report(datalist: str, out: Path, drop: list[str], show: str = "flair") -> int:
    cases = {c["case"]: c for c in load_datalist(datalist, split="test") if "label" in c}
    drop = [canonical_modality(m) for m in drop]
    without = {missing_case(c, m): cases[c]["label"] for c in cases for m in drop}
    try:
        full = _score(out / ALL, {c: entry["label"] for c, entry in cases.items()})
        missing = {fill: _score(out / fill, without) for fill in MISSING_FILLS}
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{'case':<22}{'run':<26}{'Dice TC':>9}{'Dice WT':>9}{'Dice ET':>9}")
    for case in sorted(full):
        runs = {ALL: full[case]}
        runs.update({f"no {m}, {fill}": missing[fill][missing_case(case, m)] for m in drop for fill in MISSING_FILLS})
        for run, row in runs.items():
            print(f"{case:<22}{run:<26}" + "".join(f"{row[f'Dice_{r}']:>9.3f}" for r in REGIONS))
        entry = cases[case]
        shown = show if show in entry["modalities"] else entry["modalities"][0]
        predictions = {"all modalities": _load(out / ALL / f"{case}_seg.nii.gz")}
        predictions.update({f"no {m}": _load(out / "templates" / f"{missing_case(case, m)}_seg.nii.gz") for m in drop})
        figure = save_segmentation_comparison(
            _load(entry["image"][entry["modalities"].index(shown)]),
            _load(entry["label"]),
            predictions,
            out / f"{case}_comparison.png",
            title=f"{case}: reference, all modalities, each one missing (templates), over {shown}",
        )
        print(f"  overlay: {figure}")
    summary = {
        ALL: _mean(full.values()),
        "missing": {
            fill: {m: _mean(missing[fill][missing_case(c, m)] for c in full) for m in drop} for fill in MISSING_FILLS
        },
        "cases": {ALL: sorted(full), "missing": sorted(without)},
    }
    write_json(out / "dice_summary.json", summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("prepare", "report"))
    parser.add_argument("--datalist", required=True, help="datalist with a test split (prepare_datalist.py output)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the inference datalists and predictions")
    parser.add_argument(
        "--drop", nargs="+", default=list(TEMPLATE_MODALITIES), help="modalities removed, one at a time"
    )
    parser.add_argument(
        "--max-cases", type=int, default=None, help="held-out cases to segment (default: all of the test split)"
    )
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.datalist, args.out, args.drop, args.max_cases)
        return 0
    return report(args.datalist, args.out, args.drop)


if __name__ == "__main__":
    sys.exit(main())
