"""Rigid co-registration of a study's series to its reference series, and resampling between grids.

Every series of a hospital study has its own grid (orientation, field of view, slice thickness) and the patient
may have moved between series. :func:`rigid_register` estimates the rigid motion (6 degrees of freedom) that
aligns one series (moving) to the reference (fixed) with ITK: a versor rigid transform, Mattes mutual information
(so a t2 or flair can be registered to a t1c), multi-resolution (shrink 4, 2, 1 with Gaussian smoothing),
initialised by aligning the images' centres of mass. :func:`resample_to_grid` then samples the moving series on
the reference grid by world coordinates.

Conventions: arrays are 3-D ``(i, j, k)``; affines ``(4, 4)`` map voxels to RAS world millimetres (nibabel). The
registration's ``transform`` is a RAS matrix ``T`` mapping a point of the FIXED world to the matching point of the
MOVING world, so the moving image on the fixed grid is
``resample_to_grid(moving, moving_affine, fixed_affine, fixed_shape, transform=T)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainmvp_components.transforms.itk_bridge import (
    RAS_TO_LPS,
    block_mean,
    import_itk,
    ras_matrix,
    run_mattes_registration,
    to_itk_image,
    volume_moments,
)
from brainmvp_components.transforms.registration import RegistrationError, foreground_mask

__all__ = ["RigidRegistration", "rigid_register", "resample_to_grid", "rotation_angle_deg"]


@dataclass
class RigidRegistration:
    """The outcome of one rigid registration.

    Attributes:
        transform: ``(4, 4)`` RAS matrix from the fixed world (mm) to the moving world (mm): sample the moving
            image at ``transform @ fixed_affine`` to put it on the fixed grid.
        mutual_information: the final Mattes mutual information at the finest level, stored as ITK reports it
            (negative; lower, i.e. more negative, is better).
        seconds: wall time of the registration.
        iterations: optimiser iterations at the finest level.
    """

    transform: np.ndarray
    mutual_information: float
    seconds: float
    iterations: int

    def as_record(self) -> dict:
        """JSON-ready dictionary (the transform as nested lists, rounded to 6 decimals)."""
        return {
            "transform_fixed_to_moving_ras": np.round(self.transform, 6).tolist(),
            "mutual_information": None if not math.isfinite(self.mutual_information) else self.mutual_information,
            "rotation_deg": round(rotation_angle_deg(self.transform), 3),
            "translation_mm": np.round(self.transform[:3, 3], 3).tolist(),
            "seconds": round(self.seconds, 3),
            "iterations": int(self.iterations),
        }


def rotation_angle_deg(transform: np.ndarray) -> float:
    """The rotation angle (degrees) of the rotation part of a ``(4, 4)`` rigid matrix."""
    rotation = np.asarray(transform, dtype=np.float64)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))


def _foreground_centre(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Centre of mass (RAS mm) of the image's foreground; the background noise of a head scan is left out."""
    array = np.asarray(array, dtype=np.float32)
    try:
        return volume_moments(np.where(foreground_mask(array), array, 0), affine)[0]
    except ValueError as err:
        raise RegistrationError(f"rigid registration: {err}") from err


def rigid_register(
    moving_array: np.ndarray,
    moving_affine: np.ndarray,
    fixed_array: np.ndarray,
    fixed_affine: np.ndarray,
    *,
    levels: int = 3,
    sampling: float = 0.2,
    seed: int = 0,
    iterations: Sequence[int] = (200, 100, 50),
    histogram_bins: int = 32,
    working_spacing_mm: float | None = 2.0,
) -> RigidRegistration:
    """Rigidly register a moving series to a fixed (reference) series by Mattes mutual information.

    Args:
        moving_array: the series to align ``(i, j, k)``, any contrast, possibly thick-sliced.
        moving_affine: its ``(4, 4)`` RAS affine.
        fixed_array: the reference series ``(i', j', k')``.
        fixed_affine: its ``(4, 4)`` RAS affine.
        levels: resolution levels (1 to 3): shrink factors ``4, 2, 1`` (the last ``levels`` of them), Gaussian
            smoothing ``sigma = 2, 1, 0`` voxels.
        sampling: fraction of the fixed image's voxels sampled (randomly) for the metric.
        seed: seed of that sampling (repeatable results).
        iterations: optimiser iterations per level, coarse to fine (the first ``levels`` are used).
        histogram_bins: Mattes histogram bins.
        working_spacing_mm: both images are first averaged in blocks of whole voxels to about this spacing (never
            finer than their own), so the finest level runs there: a rigid fit over a whole head needs no more,
            and a 1 mm study registers several times faster. ``None`` keeps the full resolution.

    Returns:
        the registration; ``transform`` maps the fixed world to the moving world.

    Raises:
        ValueError: a bad argument.
        RegistrationError: an empty image, or ITK failed (e.g. the images do not overlap).
    """
    if not 1 <= int(levels) <= 3:
        raise ValueError(f"levels must be 1, 2 or 3, got {levels}")
    if not 0.0 < sampling <= 1.0:
        raise ValueError(f"sampling must be in (0, 1], got {sampling}")
    if len(iterations) < levels:
        raise ValueError(f"one iteration count per level: {levels} levels, iterations {list(iterations)}")
    itk = import_itk()
    start = time.perf_counter()
    if working_spacing_mm is not None:
        fixed_array, fixed_affine = block_mean(fixed_array, fixed_affine, float(working_spacing_mm))
        moving_array, moving_affine = block_mean(moving_array, moving_affine, float(working_spacing_mm))
    fixed = to_itk_image(fixed_array, fixed_affine)
    moving = to_itk_image(moving_array, moving_affine)
    shrink = [4, 2, 1][3 - int(levels) :]
    level_iterations = [int(n) for n in iterations[: int(levels)]]

    # ITK's rigid transform is centred at the fixed centre of mass and translated onto the moving one
    fixed_centre = (RAS_TO_LPS[:3, :3] @ _foreground_centre(fixed_array, fixed_affine)).tolist()
    moving_centre = (RAS_TO_LPS[:3, :3] @ _foreground_centre(moving_array, moving_affine)).tolist()
    transform = itk.VersorRigid3DTransform[itk.D].New()
    transform.SetCenter(fixed_centre)
    transform.SetTranslation([m - f for m, f in zip(moving_centre, fixed_centre)])
    try:
        sigmas = [f / 2.0 if f > 1 else 0.0 for f in shrink]  # in voxels
        value, done = run_mattes_registration(
            fixed, moving, transform, shrink_factors=shrink, smoothing_sigmas=sigmas, level_iterations=level_iterations,
            sampling_fraction=sampling, seed=seed, histogram_bins=histogram_bins, learning_rate=2.0,
            sigmas_in_physical_units=False,
        )  # fmt: skip
    except RuntimeError as err:
        raise RegistrationError(f"ITK rigid registration failed: {str(err).strip().splitlines()[-1]}") from err
    return RigidRegistration(
        transform=ras_matrix(transform),
        mutual_information=value,
        seconds=time.perf_counter() - start,
        iterations=done,
    )


def resample_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    *,
    transform: np.ndarray | None = None,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Sample ``array`` (placed by ``affine``) on the target grid, by world coordinates.

    Args:
        array: the source volume ``(i, j, k)``.
        affine: its ``(4, 4)`` RAS affine.
        target_affine: the target grid's ``(4, 4)`` RAS affine.
        target_shape: the target grid's shape ``(i', j', k')``.
        transform: ``(4, 4)`` RAS matrix from the target world to the source world (a
            :class:`RigidRegistration`'s ``transform`` when the target is the fixed grid); identity when ``None``.
        order: spline order (0 nearest, for labels; 1 linear; 3 cubic).
        cval: value outside the source.

    Returns:
        the resampled volume of shape ``target_shape``: the source's dtype for ``order=0``, float32 otherwise.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"resample_to_grid takes a 3-D volume, got shape {array.shape}")
    target_shape = tuple(int(n) for n in target_shape)
    matrix = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    voxel_map = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ matrix @ np.asarray(target_affine, np.float64)
    source = array if order == 0 else array.astype(np.float32, copy=False)
    coefficients = source if order <= 1 else ndimage.spline_filter(source, order=order, output=np.float32)
    out = np.empty(target_shape, dtype=source.dtype)
    i, j = np.meshgrid(np.arange(target_shape[0]), np.arange(target_shape[1]), indexing="ij")
    plane = np.stack([i.ravel(), j.ravel()], axis=0).astype(np.float64)
    for k in range(target_shape[2]):  # slice by slice, to keep the coordinate arrays small
        coords = voxel_map[:3, :2] @ plane + (voxel_map[:3, 2] * k + voxel_map[:3, 3])[:, None]
        out[:, :, k] = ndimage.map_coordinates(
            coefficients, coords, order=order, mode="constant", cval=cval, prefilter=False
        ).reshape(target_shape[:2])
    return out
