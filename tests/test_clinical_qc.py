"""Case QC: a plausible case has no flags; each implausible figure gives its own flag; the CSV has a row per case."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from brainmvp_components.clinical.qc import (
    QC_COLUMNS,
    QC_RANGES,
    CaseQC,
    qc_flags,
    tumour_outside_fraction,
    tumour_volumes,
    write_qc_csv,
)


def plausible(**changes) -> CaseQC:
    qc = CaseQC(
        case_id="case-001",
        reference_series="t1c",
        registration_mi={"t2": -0.78, "flair": -0.75, "t1": -0.85},
        slice_thickness_mm={"t1c": 1.0, "t2": 5.0, "flair": 5.0, "t1": 1.0},
        brain_coverage={"t2": 1.0, "flair": 0.98, "t1": 1.0},
        brain_volume_ml=1450.0,
        already_stripped=False,
        brain_extraction="deepbet",
        tumour_volume_ml={"WT": 80.0, "TC": 30.0, "ET": 12.0},
        tumour_outside_brain_fraction=0.01,
        identity={"consistent": True, "mismatches": {}, "assignment_margin": {"t2": 0.4, "t1": 0.02}},
        seconds=95.0,
    )
    for key, value in changes.items():
        setattr(qc, key, value)
    return qc.with_flags()


def test_plausible_case_has_no_flags():
    qc = plausible()
    assert qc.flags == []
    assert json.loads(json.dumps(qc.as_record()))["case_id"] == "case-001"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"tumour_volume_ml": {"WT": 900.0, "TC": 400.0, "ET": 100.0}}, "whole tumour 900 ml is 62% of the brain"),
        ({"brain_volume_ml": 400.0}, "brain volume 400 ml is outside 800-2200 ml"),
        ({"brain_volume_ml": 4500.0}, "brain volume 4500 ml is outside 800-2200 ml"),
        ({"tumour_outside_brain_fraction": 0.3}, "30.0% of the whole tumour lies outside the brain mask"),
        (
            {"identity": {"consistent": False, "mismatches": {"t2": "flair"}, "assignment_margin": {"t2": 0.4}}},
            "series named t2 looks like flair (template assignment margin 0.40",
        ),
        (
            {
                "identity": {
                    "reliable_mismatches": {"flair": "t1"},
                    "contrast": {"flair": {"weighting": "T1"}},
                    "assignment_margin": {"flair": 0.01},
                }
            },
            "series named flair looks like t1 (T1-weighted tissue contrast)",
        ),
        ({"registration_mi": {"t2": -0.1}}, "series t2: registration mutual information -0.100 is above -0.3"),
        ({"slice_thickness_mm": {"t2": 8.0}}, "series t2: slices 8.0 mm thick"),
        ({"brain_coverage": {"flair": 0.6}}, "series flair: covers 60% of the brain"),
    ],
)
def test_each_implausible_figure_has_its_flag(changes, expected):
    flags = plausible(**changes).flags
    assert len(flags) == 1 and flags[0].startswith(expected), flags


def test_imputed_modalities_are_recorded_not_flagged():
    """Imputation is what the method is for; a study lacking a sequence is not implausible by that alone."""
    qc = plausible(imputed_modalities=["t2"])
    assert qc.flags == [] and qc.as_record()["imputed_modalities"] == ["t2"]


def test_unreliable_identity_mismatch_is_not_flagged():
    identity = {"consistent": False, "mismatches": {"t1": "t1c", "t1c": "t1"}, "assignment_margin": {"t1": 0.02}}
    assert plausible(identity=identity).flags == []


def test_ranges_can_be_overridden():
    record = plausible().as_record()
    assert qc_flags(record, {"brain_volume_ml": (1500.0, 2000.0)}) == ["brain volume 1450 ml is outside 1500-2000 ml"]
    assert QC_RANGES["brain_volume_ml"] == (800.0, 2200.0)


@pytest.mark.parametrize("convention, enhancing", [("brats2021", 4), ("brats2023", 3)])
def test_tumour_volumes_and_outside_fraction(convention, enhancing):
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0:2] = 2  # 200 voxels oedema
    labels[2] = 1  # 100 necrosis
    labels[3] = enhancing  # 100 enhancing
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 ul voxels
    volumes = tumour_volumes(labels, affine, convention)
    assert volumes == pytest.approx({"WT": 3.2, "TC": 1.6, "ET": 0.8})
    brain = np.zeros(labels.shape, dtype=bool)
    brain[1:] = True
    assert tumour_outside_fraction(labels, brain) == pytest.approx(0.25)
    assert tumour_outside_fraction(np.zeros_like(labels), brain) == 0.0


def test_qc_csv_has_one_row_per_case(tmp_path):
    path = write_qc_csv([plausible(), plausible(case_id="case-002", brain_volume_ml=400.0)], tmp_path / "qc.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ["case-001", "case-002"]
    assert list(rows[0]) == list(QC_COLUMNS)
    assert rows[0]["n_flags"] == "0" and rows[1]["n_flags"] == "1"
    assert rows[0]["worst_registration_mi"] == "-0.75" and rows[0]["WT_ml"] == "80.0"
    assert not list(tmp_path.glob(".qc.csv.*"))  # no temporary file left behind
