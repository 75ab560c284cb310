"""Tests for the learnable modality templates: physical-location sampling, gradients, NIfTI round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE, BRATS_ATLAS_SHAPE
from brainmvp_components.data.modalities import CANONICAL_MODALITIES, UnknownModalityError, modality_index
from brainmvp_components.networks.templates import ModalityTemplates

SHAPE = (20, 24, 16)
# an oriented template grid: x flipped, y flipped, 1 mm, arbitrary origin
TEMPLATE_AFFINE = np.array([[-1.0, 0, 0, 30.0], [0, -1.0, 0, 50.0], [0, 0, 1.0, -7.0], [0, 0, 0, 1]])


def _coordinate_templates() -> ModalityTemplates:
    """Three templates whose values are 1 + the voxel's i, j and k coordinate (0 outside the grid)."""
    templates = ModalityTemplates(["t1", "t2", "flair"], spatial_shape=SHAPE, affine=TEMPLATE_AFFINE)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")).astype(np.float32)
    with torch.no_grad():
        templates.weight.copy_(torch.from_numpy(grid + 1))
    return templates


def _voxel_to_voxel(matrix: np.ndarray) -> np.ndarray:
    """Crop affine whose voxels map to template voxels by ``matrix`` (4 x 4, crop voxel -> template voxel)."""
    return TEMPLATE_AFFINE @ matrix


def _sampled_coordinates(templates, crop_affine, roi) -> np.ndarray:
    """Template voxel coordinates seen at each crop voxel, ``(3, *roi)``."""
    out = templates.crop(torch.tensor([0, 1, 2]), torch.as_tensor(crop_affine), roi, normalize=False)
    return out[:, 0].detach().numpy() - 1


def _expected(matrix, roi) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in roi], indexing="ij"))
    return np.einsum("ab,b...->a...", matrix[:3, :3], ijk) + matrix[:3, 3, None, None, None]


def test_zero_initialised_defaults():
    templates = ModalityTemplates()
    assert templates.modalities == CANONICAL_MODALITIES
    assert templates.weight.shape == (len(CANONICAL_MODALITIES), *BRATS_ATLAS_SHAPE)
    assert templates.weight.requires_grad and not templates.weight.any()
    np.testing.assert_array_equal(templates.affine.numpy(), BRATS_ATLAS_AFFINE)
    del templates


@pytest.mark.parametrize(
    "matrix",
    [
        # 1 mm, same orientation, offset (3, 4, 5) voxels
        np.array([[1.0, 0, 0, 3], [0, 1, 0, 4], [0, 0, 1, 5], [0, 0, 0, 1]]),
        # 2 mm spacing
        np.array([[2.0, 0, 0, 1], [0, 2, 0, 2], [0, 0, 2, 0], [0, 0, 0, 1]]),
        # half-voxel (0.5 mm) spacing: trilinear interpolation between voxels
        np.array([[0.5, 0, 0, 2.25], [0, 0.5, 0, 3], [0, 0, 0.5, 1.5], [0, 0, 0, 1]]),
        # permuted and flipped axes: crop (i, j, k) -> template (12 - k, j + 2, i + 1)
        np.array([[0.0, 0, -1, 12], [0, 1, 0, 2], [1, 0, 0, 1], [0, 0, 0, 1]]),
    ],
)
def test_crop_samples_physical_location(matrix):
    templates = _coordinate_templates()
    roi = (5, 6, 4)
    got = _sampled_coordinates(templates, _voxel_to_voxel(matrix), roi)
    np.testing.assert_allclose(got, _expected(matrix, roi), atol=1e-4)


def test_crop_oblique_and_batched_affines():
    templates = _coordinate_templates()
    angle = np.deg2rad(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0, 8], [np.sin(angle), np.cos(angle), 0, 6], [0, 0, 1, 4], [0, 0, 0, 1]]
    )
    shift = np.array([[1.0, 0, 0, 2], [0, 1, 0, 3], [0, 0, 1, 1], [0, 0, 0, 1]])
    roi = (6, 6, 5)
    affines = torch.as_tensor(np.stack([_voxel_to_voxel(rotation), _voxel_to_voxel(shift)]))
    out = templates.crop(torch.tensor([0, 1]), affines, roi, normalize=False)[:, 0].detach().numpy() - 1
    np.testing.assert_allclose(out[0], _expected(rotation, roi)[0], atol=1e-4)  # i of the rotated grid
    np.testing.assert_allclose(out[1], _expected(shift, roi)[1], atol=1e-4)  # j of the shifted grid


def test_crop_outside_is_zero_padded():
    templates = _coordinate_templates()
    # crop starting half a voxel and one and a half voxels before the template's first i
    matrix = np.array([[1.0, 0, 0, -1.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    out = templates.crop(torch.tensor([0]), torch.as_tensor(_voxel_to_voxel(matrix)), (4, 2, 2), normalize=False)
    np.testing.assert_allclose(out[0, 0, :, 0, 0].detach().numpy(), [0.0, 0.5, 1.5, 2.5], atol=1e-5)


def test_crop_accepts_metatensor_batch_affine():
    from monai.data import MetaTensor, list_data_collate

    templates = _coordinate_templates()
    matrix = np.array([[1.0, 0, 0, 3], [0, 1, 0, 4], [0, 0, 1, 5], [0, 0, 0, 1]])
    items = [{"image": MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.as_tensor(_voxel_to_voxel(matrix)))}] * 2
    batch = list_data_collate(items)
    assert batch["image"].affine.shape == (2, 4, 4)
    out = templates.crop(torch.tensor([0, 2]), batch["image"].affine, (4, 4, 4), normalize=False)
    assert type(out) is torch.Tensor
    np.testing.assert_allclose(out[0, 0].detach().numpy() - 1, _expected(matrix, (4, 4, 4))[0], atol=1e-4)


def test_min_max_normalisation_and_constant_crop():
    templates = _coordinate_templates()
    matrix = np.array([[1.0, 0, 0, 3], [0, 1, 0, 4], [0, 0, 1, 5], [0, 0, 0, 1]])
    out = templates.crop(torch.tensor([1]), torch.as_tensor(_voxel_to_voxel(matrix)), (4, 5, 3))
    assert out.shape == (1, 1, 4, 5, 3)
    assert out.min().item() == 0.0 and out.max().item() == pytest.approx(1.0)
    zero = ModalityTemplates(["t1"], spatial_shape=SHAPE, affine=TEMPLATE_AFFINE)
    crop = zero.crop(torch.tensor([0, 0]), torch.as_tensor(TEMPLATE_AFFINE), (4, 4, 4))
    assert torch.equal(crop, torch.zeros(2, 1, 4, 4, 4))
    with torch.no_grad():
        zero.weight.fill_(5.0)
    crop = zero.crop(torch.tensor([0]), torch.as_tensor(TEMPLATE_AFFINE), (4, 4, 4))
    assert torch.isfinite(crop).all() and not crop.any()


def test_gradients_reach_only_sampled_modalities():
    templates = ModalityTemplates(["t1", "t1c", "t2", "flair"], spatial_shape=SHAPE, affine=TEMPLATE_AFFINE)
    with torch.no_grad():
        templates.weight.normal_()
    crop = templates.crop(torch.tensor([2, 0]), torch.as_tensor(TEMPLATE_AFFINE), (8, 8, 8))
    (crop * torch.rand_like(crop)).sum().backward()
    grad = templates.weight.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert not grad[1].any() and not grad[3].any()
    # only the voxels under the crop receive gradient
    assert not grad[2, 8:].any() and not grad[2, :, 8:].any()


def test_indices_for_names_and_canonical_indices():
    templates = ModalityTemplates(["flair", "t1ce", "t2"], spatial_shape=SHAPE)
    assert templates.modalities == ("flair", "t1c", "t2")
    assert templates.indices_for(["T1Gd", "t2f", "t2w"]).tolist() == [1, 0, 2]
    canonical = torch.tensor([modality_index("t2"), modality_index("flair")])
    assert templates.indices_for(canonical).tolist() == [2, 0]
    with pytest.raises(UnknownModalityError, match="pd"):
        templates.indices_for(["pd"])
    with pytest.raises(UnknownModalityError, match="adc"):
        templates.indices_for(torch.tensor([modality_index("adc")]))


def test_resample_to_grid_and_freeze():
    templates = _coordinate_templates().freeze()
    assert not templates.weight.requires_grad and not templates.training
    affine = _voxel_to_voxel(np.diag([2.0, 2.0, 2.0, 1.0]))
    single = templates.resample_to_grid("T2", affine, (6, 7, 5))
    assert single.shape == (1, 6, 7, 5) and not single.requires_grad
    # the t2 template holds 1 + j: scaled by its own 5th/95th percentiles over the whole template, then clipped
    low, high = np.percentile(templates.weight[1].numpy(), [5.0, 95.0])
    j = 2.0 * np.arange(7) + 1.0
    expected = np.clip((j - low) / (high - low), 0.0, 1.0)
    np.testing.assert_allclose(single[0, 0, :, 0].numpy(), expected, atol=1e-5)
    # one anatomical voxel has one value whatever the crop (per-crop min-max would stretch every crop to [0, 1])
    moved = _voxel_to_voxel(np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 4.0], [0, 0, 2.0, 0], [0, 0, 0, 1]]))
    shifted = templates.resample_to_grid("T2", moved, (6, 7, 5))
    torch.testing.assert_close(shifted[0, :, :-2], single[0, :, 2:])
    both = templates.resample_modalities(["flair", "t1"], torch.as_tensor(affine), (6, 7, 5))
    assert both.shape == (2, 6, 7, 5)
    torch.testing.assert_close(both[0], templates.resample_to_grid("flair", affine, (6, 7, 5))[0])


def test_crop_input_errors():
    templates = _coordinate_templates()
    with pytest.raises(ValueError, match=r"\(B, 4, 4\)"):
        templates.crop(torch.tensor([0, 1]), torch.eye(4)[None].repeat(3, 1, 1), (4, 4, 4))
    with pytest.raises(ValueError, match="index values"):
        templates.crop(torch.tensor([3]), torch.eye(4), (4, 4, 4))


def test_export_and_load_round_trip(tmp_path):
    templates = ModalityTemplates(["t1", "t1c", "flair"], spatial_shape=SHAPE, affine=TEMPLATE_AFFINE)
    with torch.no_grad():
        templates.weight.uniform_()
    paths = templates.export_nifti(tmp_path / "out", montage=False)
    assert [p.name for p in paths] == ["template_t1.nii.gz", "template_t1c.nii.gz", "template_flair.nii.gz"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    loaded = ModalityTemplates.from_nifti_dir(tmp_path / "out")
    assert loaded.modalities == ("t1", "t1c", "flair")
    torch.testing.assert_close(loaded.weight, templates.weight)
    np.testing.assert_allclose(loaded.affine.numpy(), TEMPLATE_AFFINE)
    subset = ModalityTemplates.from_nifti_dir(tmp_path / "out", modalities=["FLAIR", "t1"])
    torch.testing.assert_close(subset.weight[0], templates.weight[2])
    with pytest.raises(FileNotFoundError, match="t2"):
        ModalityTemplates.from_nifti_dir(tmp_path / "out", modalities=["t2"])


def test_export_montage_or_warning(tmp_path):
    templates = ModalityTemplates(["t1", "t2"], spatial_shape=SHAPE, affine=TEMPLATE_AFFINE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        templates.export_nifti(tmp_path)
    assert (tmp_path / "templates.png").exists() or any("montage" in str(w.message) for w in caught)


def test_load_errors_name_the_file(tmp_path):
    import nibabel as nib

    ModalityTemplates(["t1"], spatial_shape=SHAPE, affine=TEMPLATE_AFFINE).export_nifti(tmp_path, montage=False)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), TEMPLATE_AFFINE), str(tmp_path / "template_t2.nii.gz"))
    with pytest.raises(ValueError, match="template_t2.nii.gz"):
        ModalityTemplates.from_nifti_dir(tmp_path)
    (tmp_path / "template_t2.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), TEMPLATE_AFFINE), str(tmp_path / "template_bold.nii.gz"))
    with pytest.raises(ValueError, match="template_bold.nii.gz"):
        ModalityTemplates.from_nifti_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        ModalityTemplates.from_nifti_dir(tmp_path / "absent")
