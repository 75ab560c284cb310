"""Template imputation on scans outside the atlas frame: ITK affine registration of the distilled templates."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_data import MODALITIES, files_of, mean_templates, moved_copy
from monai.data import MetaTensor

from brainmvp_components.transforms.impute import ImputeMissingModalities, registration_pair
from brainmvp_components.transforms.registration import (
    TemplateRegistration,
    foreground_coverage,
    foreground_mask,
    in_atlas_frame,
    moments_alignment,
)
from brainmvp_components.transforms.templates import foreground_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def templates(brats_cohort):
    cases = sorted(p for p in brats_cohort.iterdir() if p.is_dir())
    return mean_templates(cases[1:])


def _case_image(case_dir, present) -> MetaTensor:
    """The case as the model's input: channels in MODALITIES order, absent ones zero, each scaled to [0, 1]."""
    files = files_of(case_dir)
    first = nib.load(files[present[0]])
    channels = []
    for modality in MODALITIES:
        if modality in present:
            data = nib.load(files[modality]).get_fdata(dtype=np.float32)
            channels.append(np.clip(data / np.percentile(data, 95), 0, 1))
        else:
            channels.append(np.zeros(first.shape, dtype=np.float32))
    return MetaTensor(torch.from_numpy(np.stack(channels)), affine=torch.as_tensor(first.affine))


def test_moved_case_imputation_covers_the_brain(brats_cohort, templates, tmp_path):
    """A case shifted 30 mm, rotated 15 degrees, scaled by 0.9, on an LAS 2.5 mm grid in an MNI-like frame: the
    registered t2 template covers at least 90% of its brain; placed by world coordinates it misses it."""
    case = sorted(p for p in brats_cohort.iterdir() if p.is_dir())[0]
    moved = _case_image(moved_copy(case, tmp_path / "moved"), ["t1", "t1c", "flair"])
    brain = foreground_mask(moved[0].numpy())
    assert brain.sum() > 1000

    world = ImputeMissingModalities(templates, MODALITIES, registration="never")(moved, ["t2"], case="moved")
    registered = ImputeMissingModalities(templates, MODALITIES)(moved, ["t2"], case="moved")
    world_coverage = foreground_coverage(world[2].numpy(), brain)
    coverage = foreground_coverage(registered[2].numpy(), brain)
    assert world_coverage < 0.5  # what placing by world coordinates gave: the templates miss the head
    assert coverage >= 0.9

    record = json.loads(registered.meta["template_registration"])
    assert record["method"] == "affine_mutual_information"
    assert (record["fixed_modality"], record["template_modality"]) == ("t1", "t1")
    assert record["quality"]["coverage"] >= 0.9 and record["quality"]["mutual_information"] > 0
    assert registered.meta["imputed_modalities"] == "t2"
    # present channels are untouched; the registered template overlaps the brain like the case's own t1 does
    assert torch.equal(registered[[0, 1, 3]], moved[[0, 1, 3]])
    template_t1 = templates.resample_to_grid(
        "t1",
        torch.as_tensor(record["transform_case_to_template_ras"], dtype=torch.float64) @ moved.affine.double(),
        moved.shape[1:],
    )[0].numpy()
    head = foreground_mask(template_t1)
    dice = 2 * (head & brain).sum() / (head.sum() + brain.sum())
    assert dice > 0.8


def test_atlas_frame_cases_keep_the_fast_path(brats_cohort, templates):
    """Cases on the BraTS grid (any spacing of it) are not registered: the templates go by world coordinates."""
    case = sorted(p for p in brats_cohort.iterdir() if p.is_dir())[0]
    image = _case_image(case, ["t1", "flair"])
    assert in_atlas_frame(np.asarray(image.affine), image.shape[1:])
    out = ImputeMissingModalities(templates, MODALITIES)(image, ["t1c", "t2"], case="c")
    record = json.loads(out.meta["template_registration"])
    assert record["method"] == "atlas_frame" and record["transform_case_to_template_ras"] == np.eye(4).tolist()
    # by world coordinates, and only inside the present channels' foreground (the background stays zero)
    foreground = foreground_of(image, [MODALITIES.index("t1"), MODALITIES.index("flair")])
    assert 0.05 < foreground.float().mean() < 0.95
    expected = templates.resample_to_grid("t2", image.affine, image.shape[1:])[0] * foreground
    assert torch.allclose(out[2], expected.to(out.dtype))
    assert record["quality"]["coverage"] >= 0.9
    # nothing missing: no record
    assert ImputeMissingModalities(templates, MODALITIES)(image, [], case="c").meta["template_registration"] == ""


def test_atlas_frame_detection():
    from brainmvp_components.data.atlas import atlas_grid

    for spacing in (1.0, 2.0, 4.0):
        shape, affine = atlas_grid(spacing)
        assert in_atlas_frame(affine, shape)
    shape, affine = atlas_grid(2.0)
    shifted = affine.copy()
    shifted[0, 3] += 30
    assert not in_atlas_frame(shifted, shape)
    flipped = affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[:3, 3] = affine[:3, :3] @ np.array([shape[0] - 1, 0, 0]) + affine[:3, 3]
    assert in_atlas_frame(flipped, shape)  # RAS reorientation of a BraTS image stays in the frame
    c, s = np.cos(np.deg2rad(15)), np.sin(np.deg2rad(15))
    rotated = affine.copy()
    rotated[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]
    assert not in_atlas_frame(rotated, shape)


def test_registration_pair_and_fallbacks(templates):
    """The pair registered: a present modality's own template; without one, the first (t1) template by mutual
    information. When ITK fails, the centres of mass and sizes are aligned instead."""
    assert registration_pair(["t1c", "flair"], ["t1", "t1c", "t2", "flair"]) == ("t1c", "t1c")
    assert registration_pair(["flair"], ["t2", "t1"]) == ("flair", "t1")
    assert registration_pair(["flair"], ["t2"]) == ("flair", "t2")
    with pytest.raises(ValueError):
        registration_pair([], ["t1"])

    volume = np.zeros((40, 40, 40), dtype=np.float32)
    volume[10:30, 12:28, 14:26] = 1.0
    template_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    case_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    case_affine[:3, 3] = [-20.0, 6.0, 12.0]  # the same object 20, -6, -12 mm away in the template's world
    found = moments_alignment(volume, case_affine, volume, template_affine)
    assert isinstance(found, TemplateRegistration) and found.method == "moments"
    np.testing.assert_allclose(found.transform[:3, 3], [20.0, -6.0, -12.0], atol=1e-3)
    np.testing.assert_allclose(found.transform[:3, :3], np.eye(3), atol=1e-3)

    # ITK cannot register a featureless case: the imputation falls back to the moments and says so
    flat = MetaTensor(torch.full((4, 24, 24, 24), 5.0), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    out = ImputeMissingModalities(templates, MODALITIES)(flat, ["t2"], case="flat")
    assert json.loads(out.meta["template_registration"])["method"] == "moments"
