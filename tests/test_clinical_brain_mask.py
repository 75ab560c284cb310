"""Brain extraction on the reference series: a synthetic brain given the Colin27 skull and scalp, extracted by
deepbet and by the atlas fallback; stripped inputs detected and left as they are."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brainmvp_components.clinical.brain_mask import atlas_head, extract_brain, looks_skull_stripped
from brainmvp_components.clinical.coregister import resample_to_grid
from brainmvp_components.data.cohort import synthesise_subject
from brainmvp_components.transforms.itk_bridge import volume_moments

RIM_LEVEL = {"t1": 0.15, "t1c": 0.15, "t2": 1.5, "flair": 0.2}
"""CSF between brain and skull, relative to the brain's median: dark on T1 and FLAIR, bright on T2."""


def add_skull(
    brain_image: np.ndarray,
    brain_mask: np.ndarray,
    affine: np.ndarray,
    seed: int = 0,
    *,
    rim_level: float = 0.15,
    noise: float = 0.03,
) -> np.ndarray:
    """A whole head around a skull-stripped brain: the packaged Colin27 head (skull, scalp, neck) placed around
    ``brain_mask`` (centres of mass and per-axis extents matched), its intensities scaled to the brain's median,
    a one-voxel CSF rim of ``rim_level`` x that median between the brain and the Colin27 brain outline, and
    Rician noise of ``noise`` x the median everywhere (so the background is not constant)."""
    head, colin_brain, colin_affine = atlas_head()
    case_centre, case_spread = volume_moments(brain_mask.astype(np.float32), affine)
    colin_centre, colin_spread = volume_moments(colin_brain.astype(np.float32), colin_affine)
    to_colin = np.eye(4)
    to_colin[:3, :3] = np.diag(np.sqrt(np.diag(colin_spread) / np.diag(case_spread)))
    to_colin[:3, 3] = colin_centre - to_colin[:3, :3] @ case_centre
    shape = brain_image.shape
    colin_head = resample_to_grid(head, colin_affine, affine, shape, transform=to_colin)
    colin_mask = resample_to_grid(colin_brain.astype(np.float32), colin_affine, affine, shape, transform=to_colin)
    level = float(np.median(brain_image[brain_mask]))
    scalp = colin_head * level / float(np.median(head[colin_brain]))
    rim = ndimage.binary_dilation(colin_mask >= 0.5, iterations=1) & ~brain_mask
    clean = np.where(brain_mask, brain_image, np.where(rim, rim_level * level, scalp))
    rng = np.random.default_rng(seed)
    sigma = noise * level
    return np.sqrt((clean + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def case():
    return synthesise_subject("brats", index=0, seed=0, spacing=2.0)


@pytest.fixture(scope="module")
def heads(case):
    return {
        m: add_skull(case["images"][m], case["brain_mask"], case["affine"], seed=i, rim_level=RIM_LEVEL[m])
        for i, m in enumerate(("t1c", "t2"))
    }


def test_heads_and_stripped_images_are_told_apart(case, heads):
    for modality, head in heads.items():
        stripped, evidence = looks_skull_stripped(head, case["affine"])
        assert not stripped, modality
        assert evidence["foreground_ml"] > 3000
    stripped, evidence = looks_skull_stripped(case["images"]["t1c"], case["affine"])
    assert stripped
    assert evidence["background_value"] == 0.0
    assert evidence["background_fraction"] > 0.7
    assert 1000 < evidence["foreground_ml"] < 2200


def test_stripped_input_is_detected_and_left_untouched(case):
    image = case["images"]["t1c"]
    before = image.copy()
    result = extract_brain(image, case["affine"])
    assert result.method == "none" and result.already_stripped
    np.testing.assert_array_equal(image, before)
    assert dice(result.mask, case["brain_mask"]) > 0.99
    assert result.as_record()["method"] == "none"


def test_stripped_detection_reads_a_nonzero_constant_background(case):
    shifted = case["images"]["t2"] - 100.0  # e.g. a rescale intercept: background -100 everywhere
    stripped, evidence = looks_skull_stripped(shifted, case["affine"])
    assert stripped and evidence["background_value"] == -100.0


@pytest.mark.parametrize("modality, minimum", [("t1c", 0.9), ("t2", 0.88)])
def test_deepbet_extracts_the_brain(case, heads, modality, minimum):
    pytest.importorskip("deepbet")
    result = extract_brain(heads[modality], case["affine"], method="deepbet")
    score = dice(result.mask, case["brain_mask"])
    print(f"deepbet {modality}: Dice {score:.3f}, {result.volume_ml:.0f} ml, {result.seconds:.1f} s")
    assert result.method == "deepbet" and not result.already_stripped
    assert result.mask.shape == heads[modality].shape and result.mask.dtype == bool
    assert score >= minimum  # measured 0.980 (t1c), 0.919 (t2: outside deepbet's T1 training domain)


def test_atlas_fallback_extracts_the_brain(case, heads):
    result = extract_brain(heads["t1c"], case["affine"], method="atlas")
    score = dice(result.mask, case["brain_mask"])
    print(f"atlas t1c: Dice {score:.3f}, {result.volume_ml:.0f} ml, {result.seconds:.1f} s")
    assert result.method == "atlas"
    assert score >= 0.8  # measured 0.924


def test_unknown_method_is_one_clear_error(case):
    with pytest.raises(ValueError, match="unknown brain extraction method 'bet'"):
        extract_brain(case["images"]["t1"], case["affine"], method="bet")
