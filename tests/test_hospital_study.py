"""The hospital-study path on studies as hospitals export them, against the same cases preprocessed.

Studies are made from embedded cases the test model never saw (cohort seed 7) by
:func:`brainmvp_components.clinical.exported_study.export_study`: skull and scalp from Colin27, t2 and FLAIR moved
(up to 10 degrees, 15 mm) onto their own 5 mm grids, a sagittal t1, DICOM series with scanner-like headers. The
model is the demo's segmentation model (``tests/data/hospital_model/``, see ``tests/data/README.md``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainmvp_components.clinical.coregister import resample_to_grid
from brainmvp_components.clinical.exported_study import (
    TEST_PROTOCOL,
    SeriesProtocol,
    export_study,
    oracle_preprocessing,
)
from brainmvp_components.data.cohort import synthesise_subject

pytestmark = pytest.mark.slow

MODEL_DIR = Path(__file__).parent / "data" / "hospital_model"
BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brainmvp_brats_seg"
COHORT_SEED = 7
CASES = (0, 4, 5, 6, 9)  # brains of 1.4-1.7 l: the cohort's largest (up to 2.5 l) are flagged, as they should be
SWAPPED_CASE = 9


def _wt_dice(labels: np.ndarray, truth: np.ndarray) -> float:
    pred, ref = labels > 0, truth > 0
    return float(2 * (pred & ref).sum() / max(pred.sum() + ref.sum(), 1))


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hospital_bundle")
    shutil.copytree(BUNDLE / "configs", root / "configs")
    shutil.copytree(MODEL_DIR, root / "models")
    return root


def _workflow(bundle_root: Path, **overrides):
    from monai.bundle import ConfigWorkflow

    configs = [str(bundle_root / "configs" / c) for c in ("inference.json", "quick.json", "inference_clinical.json")]
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(bundle_root / "configs" / "metadata.json"),
        workflow_type="inference",
        bundle_root=str(bundle_root),
        **overrides,
    )
    workflow.initialize()
    return workflow


@pytest.fixture(scope="module")
def subjects():
    return {i: synthesise_subject("brats", i, seed=COHORT_SEED, spacing=2.0) for i in CASES}


@pytest.fixture(scope="module")
def segmenter(bundle_root, tmp_path_factory):
    workflow = _workflow(bundle_root, output_dir=str(tmp_path_factory.mktemp("unused")))
    return workflow.parser.get_parsed_content("segmenter")


def _model_dice(segmenter, subject, images, work: Path) -> float:
    """WT Dice of the network on volumes already on the embedded case's grid, through the bundle's preprocessing."""
    files = {}
    for modality, volume in images.items():
        files[modality] = work / f"{subject['case']}_{modality}.nii.gz"
        nib.save(nib.Nifti1Image(volume, subject["affine"]), files[modality])
    regions, model_affine, _ = segmenter._segment(subject["case"], files, list(segmenter.modalities))
    whole = resample_to_grid(regions[1], model_affine, subject["affine"], subject["label"].shape, order=1)
    return _wt_dice(whole > 0.5, subject["label"])


@pytest.fixture(scope="module")
def studies(subjects, tmp_path_factory):
    """Every case exported as DICOM (one with t2 and FLAIR names swapped, one with all files in one folder)."""
    root = tmp_path_factory.mktemp("studies")
    return {
        index: export_study(
            subject,
            root / f"patient{index}",
            as_dicom=True,
            seed=100 + index,
            swap=("t2", "flair") if index == SWAPPED_CASE else None,
            one_folder=index == CASES[1],
        )  # fmt: skip
        for index, subject in subjects.items()
    }


@pytest.fixture(scope="module")
def preprocessed_dice(subjects, studies, segmenter, tmp_path_factory) -> dict[int, tuple[float, float]]:
    """Per case: WT Dice of the exported series preprocessed with the truth (known poses, true brain mask), and
    of the case as embedded (full-resolution t2 and FLAIR)."""
    work = tmp_path_factory.mktemp("preprocessed")
    return {
        index: (
            _model_dice(segmenter, subject, oracle_preprocessing(studies[index], subject), work),
            _model_dice(segmenter, subject, subject["images"], work),
        )
        for index, subject in subjects.items()
    }


@pytest.fixture(scope="module")
def hospital_run(studies, bundle_root, tmp_path_factory):
    """The studies segmented by the bundle's hospital-study configuration."""
    studies_dir = next(iter(studies.values())).case_dir.parent
    output_dir = tmp_path_factory.mktemp("hospital_out")
    workflow = _workflow(bundle_root, output_dir=str(output_dir), dataset_dir=str(studies_dir))
    results = {r.case: r for r in workflow.parser.get_parsed_content("segmenter").run(studies_dir)}
    return studies, results, output_dir


def test_raw_path_matches_preprocessed(hospital_run, preprocessed_dice):
    """WT Dice of the hospital path within 0.05 of the same exported series preprocessed with the truth, on 4
    cases (docs/hospital.md also records the Dice of the cases as embedded)."""
    studies, results, output_dir = hospital_run
    rows = []
    for index, study in studies.items():
        if index == SWAPPED_CASE:
            continue  # segmented as named; its figure is checked with reordering below
        result = results[f"patient{index}"]
        assert result.error is None, result.error
        labels = np.asarray(nib.load(result.outputs["segmentation"]).dataobj)
        seg = nib.load(result.outputs["segmentation"])
        np.testing.assert_allclose(seg.affine, study.truth_affine, atol=1e-3)  # on the reference series' grid
        raw = _wt_dice(labels, study.truth)
        rows.append((index, round(raw, 3), *(round(v, 3) for v in preprocessed_dice[index])))
    print("case, hospital path WT, truth-preprocessed WT, embedded WT:", rows)
    assert len(rows) >= 4
    for index, raw, reference, embedded in rows:
        assert embedded > 0.75, f"case {index}: the test model itself fails ({embedded:.3f}); see tests/data/README.md"
        assert raw >= reference - 0.05, f"case {index}: hospital path WT {raw:.3f} vs preprocessed {reference:.3f}"


def test_swapped_names_are_flagged_and_can_be_reordered(hospital_run, bundle_root, preprocessed_dice, tmp_path):
    studies, results, _ = hospital_run
    swapped = results[f"patient{SWAPPED_CASE}"]
    assert swapped.error is None, swapped.error
    identity = swapped.qc["identity"]
    assert not identity["consistent"]
    assert identity["reliable_mismatches"] == {"flair": "t2", "t2": "flair"}, identity
    assert any("named flair looks like t2" in flag for flag in swapped.qc["flags"]), swapped.qc["flags"]
    for index in CASES:
        if index != SWAPPED_CASE:
            assert results[f"patient{index}"].qc["identity"]["reliable_mismatches"] == {}, index

    one = tmp_path / "studies"
    shutil.copytree(studies[SWAPPED_CASE].case_dir, one / f"patient{SWAPPED_CASE}")
    workflow = _workflow(bundle_root, output_dir=str(tmp_path / "out"), identity_action="reorder")
    (result,) = workflow.parser.get_parsed_content("segmenter").run(one)
    assert result.qc["reordered"] == {"t2": "flair", "flair": "t2"}
    labels = np.asarray(nib.load(result.outputs["segmentation"]).dataobj)
    raw = _wt_dice(labels, studies[SWAPPED_CASE].truth)
    assert raw >= preprocessed_dice[SWAPPED_CASE][0] - 0.05, (raw, preprocessed_dice[SWAPPED_CASE])


def test_outputs_qc_and_dicom_seg(hospital_run):
    from brainmvp_components.clinical.dicom_seg import read_dicom_seg
    from brainmvp_components.data.series import read_study

    studies, results, output_dir = hospital_run
    result = results[f"patient{CASES[0]}"]
    for key in ("segmentation", "dicom_seg", "overlay", "qc"):
        assert Path(result.outputs[key]).is_file(), key
    qc = json.loads(Path(result.outputs["qc"]).read_text())
    assert qc["reference_modality"] == "t1c"
    assert qc["already_stripped"] is False and qc["brain_extraction"] == "deepbet"
    assert 800 <= qc["brain_volume_ml"] <= 2200
    assert qc["imputed_modalities"] == []
    assert qc["slice_thickness_mm"][qc["series"]["t2"]["name"]] == pytest.approx(5.0)
    assert all(value > 0.95 for value in qc["brain_coverage"].values()), qc["brain_coverage"]
    assert qc["flags"] == []
    series, _ = read_study(studies[CASES[0]].case_dir)
    reference = next(s for s in series if s.name.startswith("AX T1 MPRAGE POST GD"))
    labels = np.asarray(nib.load(result.outputs["segmentation"]).dataobj)
    np.testing.assert_array_equal(read_dicom_seg(result.outputs["dicom_seg"], reference.dicom_files), labels)
    rows = (output_dir / "qc.csv").read_text().splitlines()
    assert len(rows) == 1 + len(CASES)
    assert rows[0].startswith("case_id,")


def test_single_thick_t1c_with_skull_is_plausible_or_flagged(subjects, bundle_root, tmp_path):
    """The scan of the issue: contrast T1 only, 0.78 x 0.78 x 6.5 mm slices, skull on. Never an unflagged
    head-sized tumour."""
    protocol = (SeriesProtocol("t1c", "AX T1 SE +C", "axial", (0.78, 6.5), 4.0, 8.0, TEST_PROTOCOL[0].tags),)
    study = export_study(subjects[0], tmp_path / "studies" / "raw_patient", protocol=protocol, seed=3)
    workflow = _workflow(bundle_root, output_dir=str(tmp_path / "out"))
    (result,) = workflow.parser.get_parsed_content("segmenter").run(tmp_path / "studies")
    assert result.error is None, result.error
    qc = result.qc
    assert sorted(qc["imputed_modalities"]) == ["flair", "t1", "t2"]
    whole = qc["tumour_volume_ml"]["WT"]
    plausible = whole <= qc["brain_volume_ml"] / 3 and qc["tumour_outside_brain_fraction"] <= 0.05
    if not plausible:  # this model imputes FLAIR only reliably: three imputed modalities may be too many for it
        assert any("tumour" in flag for flag in qc["flags"]), qc["flags"]
    assert any("6.5 mm thick" in flag for flag in qc["flags"]), qc["flags"]
    assert study.truth.any()


def test_bundle_command_on_a_dicom_study(hospital_run, bundle_root, tmp_path, subprocess_env):
    """``python -m monai.bundle run`` with ``inference_clinical.json``: outputs, qc.csv and the last line."""
    studies, _, _ = hospital_run
    one = tmp_path / "studies"
    shutil.copytree(studies[CASES[0]].case_dir, one / "patient0")
    configs = (
        "['"
        + "','".join(
            str(bundle_root / "configs" / c) for c in ("inference.json", "quick.json", "inference_clinical.json")
        )
        + "']"
    )
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", configs,
        "--meta_file", str(bundle_root / "configs" / "metadata.json"), "--bundle_root", str(bundle_root),
        "--dataset_dir", str(one), "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=900)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output[-3000:]
    assert "hospital studies: 1 case(s), 1 segmented, 0 flagged, 0 failed" in result.stdout.strip().splitlines()[-1]
    assert (tmp_path / "out" / "patient0" / "patient0_seg.dcm").is_file()
    assert (tmp_path / "out" / "qc.csv").is_file()


def test_a_study_with_two_series_of_one_modality_fails_with_one_line(subjects, bundle_root, tmp_path):
    study = export_study(subjects[0], tmp_path / "studies" / "twice", seed=5)
    shutil.copytree(study.series_paths["t2"], study.case_dir / "05_AX_T2_FSE_repeat")
    import pydicom

    for path in (study.case_dir / "05_AX_T2_FSE_repeat").iterdir():  # a second acquisition of the same sequence
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["repeat"])
        dataset.SeriesNumber = 5
        dataset.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["repeat", path.name])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(path)
    workflow = _workflow(bundle_root, output_dir=str(tmp_path / "out"))
    from brainmvp_components.inference.batch import InferenceFailed

    with pytest.raises(InferenceFailed) as raised:
        workflow.parser.get_parsed_content("segmenter").run(tmp_path / "studies")
    assert "1 failed (twice)" in str(raised.value)
    assert len(raised.value.failures) == 1 and "t2" in raised.value.failures[0]["reason"]


def test_renaming_from_identity():
    from brainmvp_components.clinical.pipeline import names_from_identity

    names = ["t1", "t1c", "t2", "flair"]
    assert names_from_identity(names, {"flair": "t2"}) == {"flair": "t2", "t2": "flair"}
    assert names_from_identity(names, {"flair": "t2", "t2": "flair"}) == {"flair": "t2", "t2": "flair"}
    assert names_from_identity(["t1c", "t2"], {"t2": "flair"}) == {"t2": "flair"}
    assert names_from_identity(names, {}) == {}


def test_t1_and_flair_names_swapped_are_found_by_tissue_contrast(subjects, bundle_root, preprocessed_dice, tmp_path):
    """The templates cannot tell t1 from FLAIR; the tissue contrast can (white matter brighter than grey matter in
    T1, not in FLAIR)."""
    study = export_study(
        subjects[CASES[0]], tmp_path / "studies" / "swapped", seed=100 + CASES[0], swap=("t1", "flair")
    )
    workflow = _workflow(bundle_root, output_dir=str(tmp_path / "out"), identity_action="reorder")
    (result,) = workflow.parser.get_parsed_content("segmenter").run(tmp_path / "studies")
    assert result.qc["reordered"] == {"t1": "flair", "flair": "t1"}, result.qc["identity"]
    assert any("named flair looks like t1 (T1-weighted tissue contrast" in f for f in result.qc["flags"])
    labels = np.asarray(nib.load(result.outputs["segmentation"]).dataobj)
    assert _wt_dice(labels, study.truth) >= preprocessed_dice[CASES[0]][0] - 0.05


def test_loose_nifti_series_and_kept_preprocessing(subjects, bundle_root, preprocessed_dice, tmp_path):
    """The same path on NIfTI files named as a site names them: no DICOM SEG, and the model-frame volumes kept."""
    index = CASES[1]
    study = export_study(subjects[index], tmp_path / "studies" / "nifti", as_dicom=False, seed=100 + index)
    workflow = _workflow(bundle_root, output_dir=str(tmp_path / "out"), save_preprocessed=True)
    (result,) = workflow.parser.get_parsed_content("segmenter").run(tmp_path / "studies")
    assert result.error is None and result.qc["flags"] == [], (result.error, result.qc and result.qc["flags"])
    assert "dicom_seg" not in result.outputs
    kept = sorted(p.name for p in Path(result.outputs["preprocessed"]).iterdir())
    assert kept == sorted(f"nifti_{m}.nii.gz" for m in ("brain_mask", "flair", "t1", "t1c", "t2"))
    labels = np.asarray(nib.load(result.outputs["segmentation"]).dataobj)
    assert _wt_dice(labels, study.truth) >= preprocessed_dice[index][0] - 0.05
