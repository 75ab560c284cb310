"""Helpers of ``scripts/deploy_check.sh``: the study, the bundle and the comparisons of the MONAI Deploy check.

Subcommands (each prints what it wrote or found; exit status 0 on success, 1 when a check fails)::

    python scripts/deploy_check.py study --out DIR [--index N] [--seed S]
    python scripts/deploy_check.py bundle --model DIR --out DIR
    python scripts/deploy_check.py twice --study DIR --out DIR
    python scripts/deploy_check.py compare --app DIR --reference DIR --study DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "brainmvp_brats_seg"
COHORT_SEED = 7  # the cases the test model never saw, as tests/test_hospital_study.py uses them


def write_study(out: Path, index: int, seed: int) -> Path:
    """One embedded case exported as a hospital's DICOM study (the test protocol: 2 mm, t2 and FLAIR on 5 mm
    slices, moved), in ``out/<PatientID>``; returns that folder."""
    from brainmvp_components.clinical.exported_study import export_study
    from brainmvp_components.data.cohort import synthesise_subject

    subject = synthesise_subject("brats", index, seed=COHORT_SEED, spacing=2.0)
    study = export_study(subject, out / f"patient{index}", as_dicom=True, seed=seed, patient_id=f"patient{index}")
    return study.case_dir


def assemble_bundle(model: Path, out: Path) -> Path:
    """A trained bundle folder: the source bundle's configs and ``model`` (``model.pt``, ``templates/``) as
    ``models/``."""
    if not (model / "model.pt").is_file():
        raise FileNotFoundError(f"{model}: no model.pt")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(BUNDLE / "configs", out / "configs")
    shutil.copytree(model, out / "models")
    return out


def study_with_two_t2(study: Path, out: Path) -> Path:
    """A copy of ``study`` with its t2 series acquired twice (a second series, new UIDs): a study the path
    refuses, naming both series."""
    import pydicom

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(study, out)
    original = next(p for p in sorted(out.iterdir()) if p.is_dir() and "T2_FSE" in p.name)
    repeat = out / f"{original.name}_repeat"
    shutil.copytree(original, repeat)
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[str(study), "repeat"])
    for path in sorted(repeat.iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = 5
        dataset.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(study), "repeat", path.name])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(path)
    return out


def compare(app: Path, reference: Path, study: Path) -> list[str]:
    """The failures (empty when all pass) of the application's outputs ``app/<case>/`` against the bundle's
    hospital-study run ``reference/<case>/`` on the same study."""
    import highdicom as hd

    from brainmvp_components.clinical.dicom_seg import read_dicom_seg
    from brainmvp_components.data.brats import brats_label_names
    from brainmvp_components.data.series import read_study

    failures: list[str] = []
    case = study.name
    app_dir, ref_dir = app / case, reference / case
    labels_file = app_dir / f"{case}_seg.nii.gz"
    if not labels_file.is_file():
        return [f"the application wrote no {labels_file.name} in {app_dir}"]
    labels = np.asarray(nib.load(labels_file).dataobj)
    expected = np.asarray(nib.load(ref_dir / f"{case}_seg.nii.gz").dataobj)
    if labels.shape != expected.shape or not np.array_equal(labels, expected):
        differ = int((labels != expected).sum()) if labels.shape == expected.shape else "all"
        failures.append(f"labels differ from the HospitalStudySegmenter run ({differ} voxels)")
    elif not labels.any():
        failures.append("the labels are empty: no tumour found")

    qc_file = app_dir / f"{case}_qc.json"
    if not qc_file.is_file():
        failures.append(f"no QC record {qc_file.name}")
    else:
        qc = json.loads(qc_file.read_text())
        reference_qc = json.loads((ref_dir / f"{case}_qc.json").read_text())
        if qc.get("reference_modality") != "t1c" or qc.get("flags"):
            failures.append(f"QC record: reference {qc.get('reference_modality')}, flags {qc.get('flags')}")
        for key in ("tumour_volume_ml", "brain_volume_ml", "imputed_modalities"):
            if qc.get(key) != reference_qc.get(key):
                failures.append(f"QC record's {key} {qc.get(key)} differs from the reference's {reference_qc.get(key)}")
        if not any(
            s.get("evidence", "").startswith("selected by the series selection rule") for s in qc["series"].values()
        ):
            failures.append("QC record: the series were not identified by the selection rules")
    if not (app / "qc.csv").is_file():
        failures.append("no qc.csv")

    segs = sorted(app_dir.glob("*.dcm"))
    if len(segs) != 1:
        return [*failures, f"expected one DICOM SEG in {app_dir}, found {len(segs)}"]
    seg = hd.seg.segread(str(segs[0]))
    names = [str(d.SegmentLabel) for d in seg.SegmentSequence]
    wanted = list(brats_label_names("brats2021").values())
    if names != wanted:
        failures.append(f"DICOM SEG segments {names}, expected {wanted}")
    series, _ = read_study(study)
    source = next(s for s in series if s.header.get("SeriesInstanceUID") == qc_reference_uid(seg))
    if str(source.header.get("SeriesDescription")) != "AX T1 MPRAGE POST GD":
        failures.append(f"DICOM SEG references {source.name}, not the t1c series")
    decoded = read_dicom_seg(segs[0], source.dicom_files)
    if decoded.shape != labels.shape or not np.array_equal(decoded, labels):
        failures.append("the DICOM SEG decoded on its source series differs from the NIfTI labels")
    return failures


def qc_reference_uid(seg) -> str:
    """The SeriesInstanceUID that a SEG references."""
    return str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("study", help="a small exported DICOM study")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--seed", type=int, default=100)
    p = sub.add_parser("bundle", help="a trained bundle folder from a model folder")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("twice", help="a copy of a study with its t2 series twice")
    p.add_argument("--study", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("compare", help="the application's outputs against the bundle's hospital-study run")
    p.add_argument("--app", type=Path, required=True)
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--study", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "study":
        print(write_study(args.out, args.index, args.seed))
    elif args.command == "bundle":
        print(assemble_bundle(args.model, args.out))
    elif args.command == "twice":
        print(study_with_two_t2(args.study, args.out))
    else:
        failures = compare(args.app, args.reference, args.study)
        for failure in failures:
            print(f"FAIL: {failure}")
        if failures:
            return 1
        print("PASS: labels equal the HospitalStudySegmenter run; QC record; qc.csv; DICOM SEG on the t1c series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
