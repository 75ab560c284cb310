"""Modality identity check: synthetic cohort cases against templates made from other cases (their mean)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainmvp_components.clinical.identity import check_modality_identity, robust_normalise
from brainmvp_components.data.cohort import synthesise_subject

MODALITIES = ["t1", "t1c", "t2", "flair"]


@pytest.fixture(scope="module")
def templates():
    """Per modality, the mean of cases 0-2 on the atlas grid (as tests/inference_data.py::mean_templates)."""
    cases = [synthesise_subject("brats", index=i, seed=0, spacing=2.0) for i in range(3)]
    return {m: np.mean([c["images"][m] for c in cases], axis=0) for m in MODALITIES}


@pytest.fixture(scope="module", params=[4, 7])
def case(request):
    return synthesise_subject("brats", index=request.param, seed=0, spacing=2.0)


def renamed(case, names: dict[str, str]) -> dict[str, np.ndarray]:
    """The case's images under claimed names: ``names`` maps claimed name -> true modality."""
    return {claimed: case["images"][true] for claimed, true in names.items()}


def test_correct_names_are_consistent(case, templates):
    check = check_modality_identity(case["images"], templates, case["brain_mask"])
    assert check.consistent
    assert check.suggested == {m: m for m in MODALITIES}
    assert not check.reliable_mismatches
    assert check.correlation.shape == (4, 4)
    assert check.reliable["t2"] and check.margin["t2"] > 0.1


def test_t2_flair_swap_is_found(case, templates):
    images = renamed(case, {"t1": "t1", "t1c": "t1c", "t2": "flair", "flair": "t2"})
    check = check_modality_identity(images, templates, case["brain_mask"])
    assert not check.consistent
    assert check.suggested["t2"] == "flair" and check.suggested["flair"] == "t2"
    assert check.reliable_mismatches == {"flair": "t2"}  # the real t2 stands out; see the module docstring


def test_t1_t1c_swap_is_not_a_confident_answer(case, templates):
    images = renamed(case, {"t1": "t1c", "t1c": "t1", "t2": "t2", "flair": "flair"})
    check = check_modality_identity(images, templates, case["brain_mask"])
    print({n: round(v, 3) for n, v in check.assignment_margin.items()}, check.suggested)
    assert not check.reliable["t1"] and not check.reliable["t1c"]
    assert not check.reliable_mismatches


def test_record_is_json_ready(case, templates):
    record = check_modality_identity(case["images"], templates, case["brain_mask"]).as_record()
    assert json.loads(json.dumps(record))["consistent"] is True


def test_more_images_than_templates_and_unknown_names(case, templates):
    images = {"t1": case["images"]["t1"], "t2": case["images"]["t2"], "pd": case["images"]["t1c"]}
    check = check_modality_identity(images, {m: templates[m] for m in ("t1", "t2")}, case["brain_mask"])
    assert sorted(s for s in check.suggested.values() if s) == ["t1", "t2"]  # one image left unassigned
    unassigned = [n for n, s in check.suggested.items() if s is None]
    assert len(unassigned) == 1 and not check.reliable[unassigned[0]]
    assert np.isnan(check.margin["pd"]) and not check.consistent


def test_robust_normalise_clips_outliers():
    values = np.arange(1000.0).reshape(10, 10, 10)
    values[0, 0, 0] = 1e9
    normalised = robust_normalise(values, np.ones(values.shape, dtype=bool))
    assert abs(normalised.mean()) < 1e-9 and abs(normalised.std() - 1) < 1e-9
    assert normalised.max() < 2.0


def test_bad_grids_are_one_clear_error(templates):
    mask = np.ones((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="image 't1' has shape"):
        check_modality_identity({"t1": np.zeros((4, 4, 5))}, {"t1": np.zeros((4, 4, 4))}, mask)
    with pytest.raises(ValueError, match="empty"):
        check_modality_identity({"t1": np.zeros((4, 4, 4))}, {"t1": np.zeros((4, 4, 4))}, ~mask)
