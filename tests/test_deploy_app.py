"""The MONAI Deploy application (``deploy/brainmvp_seg_app``): its project-side logic, and the end-to-end check.

The unit tests run in the project's environment, without the SDK, on the code the application's operator calls:
the default series selection rules (matched as the SDK's ``DICOMSeriesSelectorOperator`` matches a string
condition), :func:`assign_selected_series` on a real exported DICOM study, the SEG frames and segments, and the
hospital-study steps on selected series against the study-folder path. The last test runs
``scripts/deploy_check.sh`` (the application under the SDK's runtime, its outputs against ``python -m monai.bundle
run``) when the SDK's environment has been built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainmvp_components.clinical.dicom_seg import segment_frames, segment_table
from brainmvp_components.clinical.exported_study import TEST_PROTOCOL, export_study
from brainmvp_components.clinical.selection import (
    DEFAULT_SELECTION_RULES,
    assign_selected_series,
    load_selection_rules,
)
from brainmvp_components.data.brats import brats_label_names
from brainmvp_components.data.cohort import synthesise_subject
from brainmvp_components.data.identify import modality_from_description
from brainmvp_components.data.series import read_study

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = REPO_ROOT / "scripts" / "deploy_check.sh"
DEPLOY_ENV = Path(os.environ.get("BRAINMVP_DEPLOY_ENV", Path.home() / ".cache" / "brainmvp" / "deploy-env"))
BUNDLE = REPO_ROOT / "bundles" / "brainmvp_brats_seg"
MODEL_DIR = Path(__file__).parent / "data" / "hospital_model"


def _sdk_selects(description: str) -> list[str]:
    """The selections whose SeriesDescription condition matches, as the SDK matches a string attribute: equal
    ignoring case, else a case-insensitive ``re.search``."""
    names = []
    for selection in DEFAULT_SELECTION_RULES["selections"]:
        pattern = selection["conditions"]["SeriesDescription"]
        if description.casefold() == pattern.casefold() or re.search(pattern, description, re.IGNORECASE):
            names.append(selection["name"])
    return names


@pytest.mark.parametrize(
    "description",
    [p.description for p in TEST_PROTOCOL]
    + ["t2_tirm_tra_dark-fluid", "Ax T1 SE +C", "AX BRAVO", "T1 KM", "t1_mprage_sag_p2_iso", "T1_MPRAGE_POST"]
    + ["AX T1 FLAIR", "AX T1 PRE", "T2W_TSE", "COR T1 POST", "T1C", "t1ce", "FLAIR 3D", "sag t1 w/o contrast"]
    + ["AX T2 PROPELLER", "Posterior fossa T2"],
)
def test_default_rules_agree_with_the_description_rules(description):
    """Each modality's series is picked by its selection only, as the hospital-study path names it."""
    assert _sdk_selects(description) == [modality_from_description(description)[0]]


@pytest.mark.parametrize(
    "description", ["3-plane localizer", "AX SWI", "T2* GRE", "DWI b1000", "ADC map", "T1 map", "AX DSC PERFUSION"]
)
def test_default_rules_leave_other_series_out(description):
    assert _sdk_selects(description) == []


def test_selection_rules_are_checked(tmp_path):
    assert load_selection_rules() == DEFAULT_SELECTION_RULES
    own = tmp_path / "rules.json"
    own.write_text(json.dumps({"selections": [{"name": "T1ce", "conditions": {"SeriesDescription": "post"}}]}))
    assert load_selection_rules(own)["selections"][0]["name"] == "T1ce"
    with pytest.raises(ValueError, match=r"rules\.json: no such file"):
        load_selection_rules(tmp_path / "missing" / "rules.json")
    own.write_text("{not json")
    with pytest.raises(ValueError, match=r"rules\.json: not JSON"):
        load_selection_rules(own)
    own.write_text(json.dumps({"selections": [{"name": "CT Series 1", "conditions": {"Modality": "CT"}}]}))
    with pytest.raises(ValueError, match=r"rules\.json: selection 1 is named 'CT Series 1', which is no modality"):
        load_selection_rules(own)
    with pytest.raises(ValueError, match="expected"):
        load_selection_rules({"rules": []})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    subject = synthesise_subject("brats", 0, seed=7, spacing=2.0)
    return export_study(subject, tmp_path_factory.mktemp("deploy") / "patient0", as_dicom=True, seed=100)


def _selected(study, names=None) -> list[tuple[str, list[Path]]]:
    """``(selection name, files)`` per series folder of an exported study, files in directory order."""
    names = names or {}
    return [
        (names.get(modality, modality), sorted(folder.iterdir(), reverse=True))
        for modality, folder in study.series_paths.items()
    ]


def test_selected_series_are_read_as_the_study_folder_reads_them(study):
    assigned, skipped = assign_selected_series(_selected(study), case="patient0")
    assert list(assigned) == ["t1", "t1c", "t2", "flair"] and skipped == []
    series, _ = read_study(study.case_dir)
    for modality, ident in assigned.items():
        same = next(s for s in series if s.header["SeriesInstanceUID"] == ident.series.header["SeriesInstanceUID"])
        np.testing.assert_array_equal(ident.series.array, same.array)
        np.testing.assert_array_equal(ident.series.affine, same.affine)
        assert ident.series.dicom_files == same.dicom_files
        assert ident.modality == modality and "selection rule" in ident.evidence


def _repeat(files: list[Path], out: Path) -> list[Path]:
    """The series of ``files`` acquired again: copies with a new SeriesInstanceUID and SOPInstanceUIDs."""
    import pydicom

    out.mkdir()
    copies = []
    for number, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["repeat"])
        dataset.SeriesNumber = 5
        dataset.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["repeat", str(number)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(out / path.name)
        copies.append(out / path.name)
    return copies


def test_selected_series_refusals(study, tmp_path):
    selected = _selected(study)
    t2 = next(files for name, files in selected if name == "t2")
    with pytest.raises(ValueError, match=r"^patient0: two series are selected as t2: 'AX T2 FSE \(series 3\)' and "):
        assign_selected_series([*selected, ("t2", _repeat(t2, tmp_path / "repeat"))], case="patient0")
    with pytest.raises(ValueError, match=r"series 'AX T2 FSE \(series 3\)' is selected as both t2 and flair"):
        assign_selected_series([*selected, ("flair", t2)])
    assigned, _ = assign_selected_series([*selected, ("T2", list(reversed(t2)))])  # two rules for one modality
    assert len(assigned) == 4
    assigned, skipped = assign_selected_series(selected, modalities=["t1c", "flair"])
    assert list(assigned) == ["t1c", "flair"]
    assert sorted(s.reason for s in skipped) == [
        "selected as t1, not a model input",
        "selected as t2, not a model input",
    ]
    ordered = sorted(t2)
    with pytest.raises(ValueError, match=r"^patient0: series 'AX T2 FSE \(series 3\)'.*missing"):
        assign_selected_series([("t2", ordered[:3] + ordered[4:])], case="patient0")
    assigned, skipped = assign_selected_series([("t2", ordered[:2])])  # two slices: a localiser, left out
    assert assigned == {} and skipped[0].name == "AX T2 FSE (series 3)"


def test_seg_frames_and_segments():
    names = brats_label_names("brats2021")
    table = segment_table(names)
    assert [(e["value"], e["tracking_id"]) for e in table] == [(1, "label 1"), (2, "label 2"), (4, "label 4")]
    assert [e["type"].meaning for e in table] == ["Necrosis", "Edema", "Neoplasm"]
    labels = np.zeros((4, 3, 2), dtype=np.uint8)  # (columns, rows, slices)
    labels[1, 2, 0], labels[3, 0, 1], labels[0, 1, 1] = 4, 1, 2
    frames = segment_frames(labels, names)
    assert frames.shape == (2, 3, 4) and frames.dtype == np.uint8
    assert frames[0, 2, 1] == 3 and frames[1, 0, 3] == 1 and frames[1, 1, 0] == 2 and frames.sum() == 6
    with pytest.raises(ValueError, match=r"label values \[3\] have no name"):
        segment_frames(np.full((2, 2, 1), 3), names)


@pytest.mark.slow
def test_selected_series_segment_as_the_study_folder(study, tmp_path):
    """What the application's operator runs (selected series, then segment_series) writes the labels and QC of
    the study-folder path (segment_case) on the same study (about 90 s)."""
    from brainmvp_components.clinical.pipeline import segmenter_from_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    shutil.copytree(MODEL_DIR, bundle / "models")
    configs = ["inference.json", "quick.json", "inference_clinical.json"]
    folder_path = segmenter_from_bundle(bundle, configs, tmp_path / "folder", save_overlay=False)
    expected = folder_path.segment_case(study.case_dir)
    selected_path = segmenter_from_bundle(bundle, configs, tmp_path / "selected", save_overlay=False)
    assigned, skipped = assign_selected_series(_selected(study), case="patient0")
    result = selected_path.segment_series("patient0", assigned, skipped=skipped)
    selected_path.finish([result])
    labels = np.asarray(nib.load(result.outputs["segmentation"]).dataobj)
    np.testing.assert_array_equal(labels, np.asarray(nib.load(expected.outputs["segmentation"]).dataobj))
    assert labels.any()
    assert Path(result.outputs["dicom_seg"]).is_file() and (tmp_path / "selected" / "qc.csv").is_file()
    for key in ("reference_modality", "tumour_volume_ml", "brain_volume_ml", "flags", "imputed_modalities"):
        assert result.qc[key] == expected.qc[key], key
    assert result.qc["series"]["t2"]["evidence"] == "selected by the series selection rule 't2'"


def test_segment_series_refuses_what_the_model_does_not_take(tmp_path):
    from brainmvp_components.clinical.pipeline import HospitalStudySegmenter

    segmenter = HospitalStudySegmenter.__new__(HospitalStudySegmenter)
    segmenter.modalities = ["t1", "t1c"]
    with pytest.raises(ValueError, match=r"^case1: no series given"):
        segmenter.segment_series("case1", {})
    with pytest.raises(ValueError, match=r"^case1: series given as \['t2'\]"):
        segmenter.segment_series("case1", {"t2": object()})


def test_segmenter_from_bundle_names_what_is_missing(tmp_path):
    from brainmvp_components.clinical.pipeline import segmenter_from_bundle
    from brainmvp_components.inference.batch import InferenceError

    with pytest.raises(InferenceError, match=r"lacks .*inference_clinical\.json"):
        segmenter_from_bundle(tmp_path, ["inference.json", "inference_clinical.json"])


@pytest.mark.slow
def test_deploy_check_script():
    """The end-to-end check: the application under the SDK's runtime on an exported DICOM study (about 3 minutes
    once the environment exists)."""
    if not (DEPLOY_ENV / ".brainmvp-deploy").is_file():
        pytest.skip(
            f"MONAI Deploy's environment {DEPLOY_ENV} does not exist; build it and run the check with "
            "`bash scripts/deploy_check.sh` (about 3.8 GB, installs MONAI Deploy App SDK 4.0.0 and Holoscan)"
        )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRAINMVP_DEPLOY_ENV": str(DEPLOY_ENV)}
    env.pop("BRAINMVP_DEPLOY_WORK", None)
    result = subprocess.run(["bash", str(CHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-10000:]
    assert "FAIL" not in result.stdout and result.stdout.count("PASS") == 3, result.stdout
