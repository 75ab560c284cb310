"""Time the hospital-study path step by step on 4-series studies at 1 mm in-plane, against segmentation alone.

Example::

    python scripts/benchmark_hospital.py --cases 2
    python scripts/benchmark_hospital.py --model-dir demo_outputs/runs/seg/models --configs inference.json,quick.json

Each study is an embedded case exported by :func:`~brainmvp_components.clinical.exported_study.export_study` with
:data:`~brainmvp_components.clinical.exported_study.CLINICAL_PROTOCOL` (t1c 1 mm isotropic, a sagittal 1 mm t1, t2
and FLAIR at 1 x 1 x 5 mm, all as DICOM, skull on). The steps are those of
:class:`~brainmvp_components.clinical.pipeline.HospitalStudySegmenter` (its QC record times them); the baseline
run beside it is the same network on the case as embedded (atlas frame, skull-stripped: segmentation only). The
first case pays ITK's and deepbet's one-off loading, reported apart. Peak memory is this process's maximum
resident set size.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from brainmvp_components.benchmarks.harness import GIB, PACKAGE_ROOT, Timer, markdown_table, max_rss_bytes

__all__ = ["PREPROCESSING_STEPS", "PREPROCESSING_TARGET_S", "run"]

PREPROCESSING_STEPS = ("read_and_identify", "coregistration", "brain_extraction", "atlas_alignment", "identity_check")
"""The steps before the network; the issue's target is on their sum."""

PREPROCESSING_TARGET_S = 60.0

_BUNDLE = PACKAGE_ROOT / "bundles" / "brainmvp_brats_seg"
_TEST_MODEL = PACKAGE_ROOT / "tests" / "data" / "hospital_model"


def run(args: argparse.Namespace) -> int:
    """Benchmark ``args.cases`` studies (``scripts/benchmark_hospital.py``'s arguments); prints the tables."""
    import nibabel as nib

    from brainmvp_components.clinical.exported_study import CLINICAL_PROTOCOL, export_study
    from brainmvp_components.clinical.pipeline import segmenter_from_bundle
    from brainmvp_components.data.cohort import synthesise_subject

    work = Path(tempfile.mkdtemp(prefix="hospital_bench_"))
    try:
        bundle_root = work / "bundle"
        shutil.copytree(_BUNDLE / "configs", bundle_root / "configs")
        shutil.copytree(Path(args.model_dir), bundle_root / "models")
        configs = [*args.configs.split(","), "inference_clinical.json"]
        segmenter = segmenter_from_bundle(bundle_root, configs, work / "out")
        rows, baseline = [], []
        for number in range(args.cases):
            subject = synthesise_subject("brats", number, seed=args.seed, spacing=1.0)
            study_dir = work / "studies" / f"case{number}"
            study = export_study(subject, study_dir, protocol=CLINICAL_PROTOCOL, seed=number)
            sizes = {m: "x".join(str(n) for n in image.shape) for m, (image, _) in study.images.items()}
            with Timer() as timer:
                record = segmenter.segment_case(study_dir).qc
            steps = dict(record["step_seconds"])
            steps["preprocessing"] = sum(steps[s] for s in PREPROCESSING_STEPS)
            steps["total"] = timer.wall
            rows.append(steps)
            files = {}
            for modality, volume in subject["images"].items():
                files[modality] = work / f"embedded_{modality}.nii.gz"
                nib.save(nib.Nifti1Image(volume, subject["affine"]), files[modality])
            with Timer() as timer:
                segmenter._segment(subject["case"], files, list(segmenter.modalities))
            baseline.append(timer.wall)
            print(
                f"case {number}: series {sizes}; preprocessing {steps['preprocessing']:.1f} s, total "
                f"{steps['total']:.1f} s, segmentation of the embedded case {timer.wall:.1f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    steady = rows[1:] or rows
    names = [*PREPROCESSING_STEPS, "preprocessing", "segmentation", "writing", "total"]
    table = []
    for name in names:
        values = [r[name] for r in steady]
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        table.append([name, f"{statistics.mean(values):.1f}", f"{spread:.1f}", f"{rows[0][name]:.1f}"])
    table.append(
        [
            "segmentation only (embedded case, baseline)",
            f"{statistics.mean(baseline[1:] or baseline):.1f}",
            "",
            f"{baseline[0]:.1f}",
        ]
    )
    print()
    print(markdown_table(["step", "mean s (cases after the first)", "sd", "first case s"], table))
    preprocessing = statistics.mean(r["preprocessing"] for r in steady)
    print()
    print(
        f"preprocessing {preprocessing:.1f} s per study: {preprocessing / PREPROCESSING_TARGET_S:.2f}x the "
        f"{PREPROCESSING_TARGET_S:.0f} s target; whole path {statistics.mean(r['total'] for r in steady):.1f} s, "
        f"{statistics.mean(r['total'] for r in steady) / statistics.mean(baseline[1:] or baseline):.1f}x "
        f"segmentation alone; peak memory {max_rss_bytes() / GIB:.2f} GiB"
    )
    return 0 if preprocessing <= PREPROCESSING_TARGET_S else 1


def default_model_dir() -> Path:
    """The model the tests use (the demo's segmentation model, ``tests/data/hospital_model``)."""
    return _TEST_MODEL
