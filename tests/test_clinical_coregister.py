"""Rigid co-registration of a study's series: a synthetic case moved by known rigid motions, resampled onto an
oblique 5 mm thick-slice grid, registered back to the original (same contrast and t2/flair to t1c)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from brainmvp_components.clinical.coregister import (
    RigidRegistration,
    resample_to_grid,
    rigid_register,
    rotation_angle_deg,
)
from brainmvp_components.data.cohort import synthesise_subject


@pytest.fixture(scope="module")
def case():
    return synthesise_subject("brats", index=0, seed=0, spacing=2.0)


def _centre(case) -> np.ndarray:
    affine, shape = case["affine"], case["brain_mask"].shape
    return affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]


def rigid_motion(angles_deg, shift_mm, centre) -> np.ndarray:
    """A RAS rigid matrix: rotation about ``centre`` (x, y, z Euler angles) then a shift."""
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    motion[:3, 3] = centre + np.asarray(shift_mm) - motion[:3, :3] @ centre
    return motion


def thick_slice_series(image, affine, motion, centre, slice_mm=5.0, inplane_mm=2.0, tilt_deg=12.0):
    """The image seen by a scanner after the patient moved by ``motion`` (fixed world -> moving world): an oblique
    grid of ``slice_mm`` slices, each slice the mean over its thickness (partial volume)."""
    shape = (100, 110, int(round(140 / slice_mm)))
    grid = np.eye(4)
    grid[:3, :3] = Rotation.from_euler("x", tilt_deg, degrees=True).as_matrix() @ np.diag(
        [inplane_mm, inplane_mm, slice_mm]
    )
    grid[:3, 3] = centre - grid[:3, :3] @ ((np.array(shape) - 1) / 2)
    inverse = np.linalg.inv(motion)
    slabs = []
    for offset in np.linspace(-0.4, 0.4, 5):
        sub = grid.copy()
        sub[:3, 3] += grid[:3, 2] * offset
        slabs.append(resample_to_grid(image, affine, sub, shape, transform=inverse))
    return np.mean(slabs, axis=0).astype(np.float32), grid


def displacement_error(estimate, truth, brain, affine) -> float:
    """Mean distance (mm) over the brain voxels between where the two transforms send them."""
    index = np.argwhere(brain)[::5]
    points = np.c_[index, np.ones(len(index))] @ np.asarray(affine).T
    return float(np.linalg.norm((points @ estimate.T - points @ truth.T)[:, :3], axis=1).mean())


@pytest.mark.parametrize(
    "fixed, moving, angles, shift",
    [
        ("t1c", "t1c", (10.0, -6.0, 4.0), (15.0, -10.0, 8.0)),
        ("t1c", "t1c", (-4.0, 9.0, -10.0), (-8.0, 15.0, -12.0)),
        ("t1c", "t2", (-8.0, 5.0, -10.0), (-12.0, 14.0, -6.0)),
        ("t1c", "flair", (5.0, 10.0, -3.0), (8.0, 8.0, 15.0)),
    ],
)
def test_rigid_register_recovers_known_motion_on_thick_slices(case, fixed, moving, angles, shift):
    centre = _centre(case)
    truth = rigid_motion(angles, shift, centre)
    series, grid = thick_slice_series(case["images"][moving], case["affine"], truth, centre)

    result = rigid_register(series, grid, case["images"][fixed], case["affine"])

    error_mm = displacement_error(result.transform, truth, case["brain_mask"], case["affine"])
    error_deg = rotation_angle_deg(np.linalg.inv(truth) @ result.transform)
    print(f"{moving}->{fixed}: {error_mm:.2f} mm, {error_deg:.2f} deg, {result.seconds:.1f} s")
    assert error_mm <= 1.5
    assert error_deg <= 2.0
    assert result.mutual_information < 0  # ITK's sign: more negative is better
    assert result.iterations > 0


def test_registered_series_overlays_the_reference(case):
    centre = _centre(case)
    truth = rigid_motion((6.0, 0.0, -6.0), (10.0, 0.0, 5.0), centre)
    series, grid = thick_slice_series(case["images"]["t1c"], case["affine"], truth, centre)
    result = rigid_register(series, grid, case["images"]["t1c"], case["affine"])

    shape = case["brain_mask"].shape
    aligned = resample_to_grid(series, grid, case["affine"], shape, transform=result.transform)
    unaligned = resample_to_grid(series, grid, case["affine"], shape)
    brain = case["brain_mask"]
    reference = case["images"]["t1c"][brain]
    assert np.corrcoef(aligned[brain], reference)[0, 1] > 0.7  # thick slices blur: 0.76 measured
    assert np.corrcoef(aligned[brain], reference)[0, 1] > np.corrcoef(unaligned[brain], reference)[0, 1] + 0.2


def test_as_record_is_json_ready():
    record = RigidRegistration(np.eye(4), -0.8, 1.25, 30).as_record()
    assert json.loads(json.dumps(record))["rotation_deg"] == 0.0
    assert record["mutual_information"] == -0.8


def test_resample_to_grid_identity_and_labels():
    rng = np.random.default_rng(0)
    volume = rng.random((6, 7, 5)).astype(np.float32)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = (5.0, -3.0, 1.0)
    np.testing.assert_allclose(resample_to_grid(volume, affine, affine, volume.shape), volume, atol=1e-6)

    labels = rng.integers(0, 5, size=(6, 7, 5)).astype(np.uint8)
    flipped = affine @ np.array([[-1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # same voxels, i flipped
    out = resample_to_grid(labels, affine, flipped, labels.shape, order=0)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels[::-1])

    shift = np.eye(4)
    shift[0, 3] = 2.0  # target world x -> source world x + 2 mm: one voxel along i
    moved = resample_to_grid(volume, affine, affine, volume.shape, transform=shift, cval=-1.0)
    np.testing.assert_allclose(moved[:-1], volume[1:], atol=1e-6)
    assert np.all(moved[-1] == -1.0)


def test_bad_arguments_are_one_clear_error(case):
    image = case["images"]["t1"]
    with pytest.raises(ValueError, match="levels"):
        rigid_register(image, case["affine"], image, case["affine"], levels=4)
    with pytest.raises(ValueError, match="3-D"):
        resample_to_grid(np.zeros((3, 3)), np.eye(4), np.eye(4), (3, 3, 3))
