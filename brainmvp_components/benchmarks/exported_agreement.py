"""Does the exported model give the same labels? Dice of each runtime against the reference, beside eager PyTorch's.

A trained segmentation bundle (``models/model.pt``) segments the labelled cases of a datalist's test split through
its ``inference.json`` (eager PyTorch, float32) and through each exported runtime (:data:`RUNTIMES`: the bundle's
``inference_onnx.json`` and ``inference_openvino.json`` on the ONNX file that ``onnx_export`` writes from the same
checkpoint), each run as ``python -m monai.bundle run``. Every run's label maps are scored against the reference
segmentations with BraTS region Dice; the report is each runtime's mean Dice per region, its difference from
eager's, and the share of voxels whose label differs from eager's. A runtime agrees when every region's mean
Dice is within ``tolerance`` (0.005) of eager's.

``scripts/check_exported.py`` is the command line; ``docs/benchmarks.md`` records runs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from brainmvp_components.benchmarks import harness

__all__ = ["RUNTIMES", "REGIONS", "agreement_rows", "label_disagreement", "labelled_test_cases", "main", "report"]

SEG_BUNDLE = harness.PACKAGE_ROOT / "bundles" / "brainmvp_brats_seg"
REGIONS = ("tc", "wt", "et")

RUNTIMES: dict[str, dict] = {
    "onnxruntime": {"configs": ["inference_onnx.json"], "overrides": {}},
    "openvino_f32": {"configs": ["inference_openvino.json"], "overrides": {"openvino_precision": "f32"}},
    "openvino": {"configs": ["inference_openvino.json"], "overrides": {}},
}
"""Each exported runtime's config files (after ``inference.json`` and the extra configs) and overrides."""


def _bundle_run(configs: Sequence[Path], bundle_root: Path, overrides: Mapping[str, object], log: Path) -> None:
    files = str([str(c) for c in configs])
    meta = str(SEG_BUNDLE / "configs" / "metadata.json")
    words = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--meta_file", meta]
    words += ["--bundle_root", str(bundle_root)]
    for key, value in overrides.items():
        words += [f"--{key}", value if isinstance(value, str) else repr(value)]
    with open(log, "w") as stream:
        done = subprocess.run(words, stdout=stream, stderr=subprocess.STDOUT, env=harness.child_env())
    if done.returncode != 0:
        raise RuntimeError(f"`{shlex.join(words)}` failed (exit {done.returncode}); see {log}")


def _export(onnx_path: Path, bundle_root: Path, configs: Sequence[Path], roi_size: Sequence[int], log: Path) -> None:
    from brainmvp_components.inference.onnx_network import onnx_export_command

    command = onnx_export_command(onnx_path, bundle_root / "models" / "model.pt", [str(c) for c in configs],
                                  [1, 4, *roi_size])  # fmt: skip
    with open(log, "w") as stream:
        done = subprocess.run(command, shell=True, stdout=stream, stderr=subprocess.STDOUT, env=harness.child_env())
    if done.returncode != 0 or not onnx_path.is_file():
        raise RuntimeError(f"the export failed (exit {done.returncode}); see {log}")


def _load_labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asanyarray(nib.load(str(path)).dataobj)


def label_disagreement(folder: Path, reference_folder: Path, cases: Sequence[str]) -> float:
    """Share of voxels, over all ``cases``, whose label in ``folder`` differs from that in ``reference_folder``."""
    differing = total = 0
    for case in cases:
        a = _load_labels(folder / f"{case}_seg.nii.gz")
        b = _load_labels(reference_folder / f"{case}_seg.nii.gz")
        if a.shape != b.shape:
            raise ValueError(f"{case}: label maps differ in shape, {a.shape} and {b.shape}")
        differing += int(np.count_nonzero(a != b))
        total += a.size
    return differing / total if total else 0.0


def _mean_dice(folder: Path, references: Mapping[str, str]) -> dict[str, float]:
    from brainmvp_components.metrics.segmentation import evaluate_segmentation_files

    missing = [case for case in references if not (folder / f"{case}_seg.nii.gz").is_file()]
    if missing:
        raise FileNotFoundError(f"no prediction under {folder} for {', '.join(missing)}")
    pairs = [(str(folder / f"{case}_seg.nii.gz"), label) for case, label in references.items()]
    rows = evaluate_segmentation_files(pairs, case_ids=list(references))
    return {region: float(np.mean([row[f"Dice_{region.upper()}"] for row in rows])) for region in REGIONS}


def agreement_rows(
    folders: Mapping[str, Path], references: Mapping[str, str], reference_run: str = "eager"
) -> list[dict]:
    """One row per run: mean Dice per region, its difference from ``reference_run``'s, and the share of voxels
    labelled differently from it. ``folders``: run name -> folder of ``<case>_seg.nii.gz``; ``references``: case ->
    reference segmentation file."""
    dice = {name: _mean_dice(folder, references) for name, folder in folders.items()}
    rows = []
    for name, folder in folders.items():
        row = {"run": name, **{f"dice_{r}": dice[name][r] for r in REGIONS}}
        row.update({f"diff_{r}": dice[name][r] - dice[reference_run][r] for r in REGIONS})
        row["voxels_differing"] = label_disagreement(folder, folders[reference_run], list(references))
        rows.append(row)
    return rows


def report(rows: Sequence[dict], tolerance: float) -> str:
    """Markdown table of :func:`agreement_rows`, with whether each run is within ``tolerance``."""
    lines = ["| run | Dice TC | Dice WT | Dice ET | largest difference from eager | voxels labelled differently | "
             f"within {tolerance} |", "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for row in rows:
        largest = max(abs(row[f"diff_{r}"]) for r in REGIONS)
        lines.append(
            f"| {row['run']} | {row['dice_tc']:.4f} | {row['dice_wt']:.4f} | {row['dice_et']:.4f} | {largest:.4f} | "
            f"{row['voxels_differing']:.5%} | {'yes' if largest <= tolerance else 'NO'} |"
        )
    return "\n".join(lines)


def labelled_test_cases(bundle_root: Path, datalist: Path) -> dict[str, str]:
    """Case -> reference segmentation of the labelled cases in ``datalist``'s test split, once the trained bundle's
    ``models/model.pt`` is known to exist; a clear exit when either is missing."""
    from brainmvp_components.data.datalist import load_datalist

    weights = bundle_root / "models" / "model.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights} not found: train the bundle first")
    references = {e["case"]: e["label"] for e in load_datalist(str(datalist), split="test") if "label" in e}
    if not references:
        raise SystemExit(f"{datalist}: no labelled case in its test split")
    return references


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle-root", required=True, type=Path, help="trained bundle folder (models/model.pt)")
    parser.add_argument("--datalist", required=True, type=Path, help="datalist whose test split holds labels")
    parser.add_argument("--work-dir", required=True, type=Path, help="where the ONNX file and predictions go")
    parser.add_argument("--extra-configs", nargs="*", default=[], help="configs after inference.json (quick.json)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, of {', '.join(RUNTIMES)}")
    parser.add_argument("--tolerance", type=float, default=0.005, help="largest allowed mean-Dice difference")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run eager and each exported runtime, print the table; exit 1 when a runtime is outside the tolerance."""
    from monai.bundle import ConfigParser

    args = parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise SystemExit(f"unknown runtime(s) {unknown}; choose from {list(RUNTIMES)}")
    references = labelled_test_cases(args.bundle_root, args.datalist)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    configs = [SEG_BUNDLE / "configs" / "inference.json", *[Path(c).resolve() for c in args.extra_configs]]
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    roi_size = [int(s) for s in parser.get_parsed_content("roi_size")]
    onnx_path = work / "model.onnx"
    if not onnx_path.is_file():
        print(f"exporting {args.bundle_root / 'models' / 'model.pt'} to {onnx_path}", flush=True)
        _export(onnx_path, args.bundle_root.resolve(), configs, roi_size, work / "export.log")
    common = {"datalist": str(args.datalist.resolve()), "overwrite": True}
    folders: dict[str, Path] = {}
    for name in ["eager", *runtimes]:
        spec = RUNTIMES.get(name, {"configs": [], "overrides": {}})
        run_configs = [*configs, *[SEG_BUNDLE / "configs" / c for c in spec["configs"]]]
        overrides = {**common, **spec["overrides"], "output_dir": str(work / name)}
        if spec["configs"]:
            overrides["onnx_path"] = str(onnx_path)
        print(f"segmenting {len(references)} case(s) with {name}", flush=True)
        _bundle_run(run_configs, args.bundle_root.resolve(), overrides, work / f"{name}.log")
        folders[name] = work / name
    rows = agreement_rows(folders, references)
    print(report(rows, args.tolerance))
    if args.json:
        from brainmvp_components.utils.writers import write_json

        write_json(args.json, {"tolerance": args.tolerance, "rows": rows})
    outside = [r["run"] for r in rows if max(abs(r[f"diff_{g}"]) for g in REGIONS) > args.tolerance]
    if outside:
        print(f"outside the tolerance: {', '.join(outside)}")
    return 1 if outside else 0


if __name__ == "__main__":
    raise SystemExit(main())
