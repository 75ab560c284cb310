"""Tissue-contrast weighting of images in the atlas frame, on embedded cases, and the renaming it implies."""

from __future__ import annotations

from brainmvp_components.clinical.contrast import contrast_mismatches, tissue_contrast, weighting_of
from brainmvp_components.data.cohort import nominal_tissues, synthesise_subject


def test_each_modality_shows_its_weighting_or_none():
    """Over 8 embedded cases: no image is called another weighting than its own; most are called."""
    tissues = nominal_tissues(2.0)
    expected = {"t1": "T1", "t1c": "T1", "t2": "T2", "flair": "FLAIR"}
    called = 0
    for index in range(8):
        subject = synthesise_subject("brats", index, seed=11, spacing=2.0)
        for modality, weighting in expected.items():
            contrast = tissue_contrast(subject["images"][modality], subject["brain_mask"], tissues)
            found = weighting_of(contrast)
            assert found in (weighting, None), (index, modality, contrast)
            called += found is not None
        assert weighting_of(tissue_contrast(subject["images"]["t2"], subject["brain_mask"], tissues)) == "T2"
    assert called >= 24, called


def test_undecided_and_empty_contrasts():
    assert weighting_of({"wm_minus_gm": 0.3, "csf_minus_gm": -1.0}) is None  # between FLAIR and T1
    assert weighting_of({"wm_minus_gm": 0.0, "csf_minus_gm": -1.0}) is None
    assert weighting_of({"wm_minus_gm": 1.0, "csf_minus_gm": 0.1}) is None
    assert weighting_of({"wm_minus_gm": float("nan"), "csf_minus_gm": -1.0}) is None


def test_mismatches_become_exchanges_or_renamings():
    assert contrast_mismatches({"t1": "T1", "t1c": "T1", "t2": "T2", "flair": "FLAIR"}) == {}
    assert contrast_mismatches({"t1": "FLAIR", "t1c": "T1", "t2": "T2", "flair": "T1"}) == {
        "t1": "flair",
        "flair": "t1",
    }
    # the image under the t1 name is undecided: the confirmed t1c is not the partner, t1 is
    assert contrast_mismatches({"t1": None, "t1c": "T1", "t2": "T2", "flair": "T1"}) == {"flair": "t1", "t1": "flair"}
    assert contrast_mismatches({"t2": "FLAIR", "flair": "T2"}) == {"t2": "flair", "flair": "t2"}
    assert contrast_mismatches({"flair": "T1"}) == {"flair": "t1"}  # a single misnamed series
    assert contrast_mismatches({"t1": "FLAIR", "t1c": "T1", "flair": "FLAIR"}) == {}  # no free name to give
