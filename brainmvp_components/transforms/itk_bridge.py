"""Numpy <-> ITK plumbing shared by the registrations: images placed by RAS affines, RAS matrices of ITK
transforms, image moments, block-mean shrinking, and the multi-resolution Mattes mutual-information run both
registrations make.

Conventions: NIfTI/MONAI affines map voxels ``(i, j, k)`` to RAS world millimetres; ITK works in LPS. A volume
``(i, j, k)`` becomes an ITK image whose index ``(i, j, k)`` is the same voxel (ITK's array view is ``(k, j, i)``).
A ``(4, 4)`` RAS matrix ``M`` is ``F @ M_lps @ F`` with ``F = diag(-1, -1, 1, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "RAS_TO_LPS",
    "import_itk",
    "to_itk_image",
    "ras_matrix",
    "set_ras_matrix",
    "volume_moments",
    "block_mean",
    "run_mattes_registration",
]

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def import_itk():
    """The ``itk`` module, or an ``ImportError`` saying how to install it."""
    try:
        import itk
    except ImportError as err:  # monai[itk] installs it; say what to do when it is absent
        raise ImportError("registration needs ITK: pip install itk (part of monai[itk])") from err
    return itk


def to_itk_image(volume: np.ndarray, affine: np.ndarray):
    """A float32 ITK image of ``volume (i, j, k)`` placed by the RAS ``affine`` (4, 4)."""
    itk = import_itk()
    image = itk.image_view_from_array(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    return image


def ras_matrix(transform) -> np.ndarray:
    """The RAS ``(4, 4)`` matrix of an ITK matrix-offset transform (affine, Euler, versor rigid) given in LPS."""
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    offset = np.asarray(transform.GetOffset(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = matrix, offset
    return RAS_TO_LPS @ lps @ RAS_TO_LPS


def set_ras_matrix(transform, ras: np.ndarray) -> None:
    """Set an ITK affine transform (LPS) from a RAS ``(4, 4)`` matrix."""
    itk = import_itk()
    lps = RAS_TO_LPS @ np.asarray(ras, dtype=np.float64) @ RAS_TO_LPS
    transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3])))
    transform.SetOffset([float(v) for v in lps[:3, 3]])


def volume_moments(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (world, RAS mm) ``(3,)`` and second-moment matrix ``(3, 3)`` of a non-negative volume.

    Raises:
        ValueError: the volume has no positive voxel.
    """
    volume = np.clip(np.asarray(volume, dtype=np.float64), 0, None)
    total = volume.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("the image is empty (no positive voxels): nothing to align")
    step = max(1, int(round((volume.size / 2e5) ** (1 / 3))))  # a subsample is plenty for moments
    sub = volume[::step, ::step, ::step]
    if sub.sum() <= 0:  # a tiny object the subsample missed
        step, sub = 1, volume
    index = np.stack(np.meshgrid(*[np.arange(0, n, step) for n in volume.shape], indexing="ij"), -1).reshape(-1, 3)
    weights = sub.reshape(-1) / sub.sum()
    world = index @ np.asarray(affine, dtype=np.float64)[:3, :3].T + np.asarray(affine, dtype=np.float64)[:3, 3]
    centre = weights @ world
    spread = (world - centre).T @ ((world - centre) * weights[:, None])
    return centre, spread


def block_mean(volume: np.ndarray, affine: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Average blocks of whole voxels so that the spacing approaches ``spacing_mm`` (never finer than the input);
    returns the smaller volume and its affine (voxel centres at the blocks' centres)."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    factors = [max(1, int(spacing_mm // s)) for s in spacing]
    volume = np.asarray(volume, dtype=np.float32)
    if factors == [1, 1, 1]:
        return volume, affine
    shape = [n // f for n, f in zip(volume.shape, factors)]
    if min(shape) < 4:  # too small to shrink: keep the input
        return volume, affine
    cropped = volume[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    blocks = cropped.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]).mean(axis=(1, 3, 5))
    scaled = affine.copy()
    scaled[:3, :3] = affine[:3, :3] * np.asarray(factors, dtype=np.float64)
    scaled[:3, 3] = affine[:3, :3] @ ((np.asarray(factors, dtype=np.float64) - 1) / 2) + affine[:3, 3]
    return blocks, scaled


def run_mattes_registration(
    fixed,
    moving,
    transform,
    *,
    shrink_factors: Sequence[int],
    smoothing_sigmas: Sequence[float],
    level_iterations: Sequence[int],
    sampling_fraction: float,
    seed: int,
    histogram_bins: int = 32,
    learning_rate: float = 1.0,
    sigmas_in_physical_units: bool = True,
) -> tuple[float, int]:
    """Register ``moving`` to ``fixed`` (ITK images) in place of ``transform`` (its start), by Mattes mutual
    information and regular-step gradient descent over resolution levels.

    Args:
        fixed, moving: ITK images of one type.
        transform: the ITK transform to optimise (fixed physical space to moving), updated in place.
        shrink_factors, smoothing_sigmas: per level, coarse to fine.
        level_iterations: optimiser iterations per level (the last repeats for extra levels).
        sampling_fraction: fraction of the fixed image's voxels sampled (randomly) for the metric.
        seed: seed of that sampling (repeatable results).
        histogram_bins: Mattes histogram bins.
        learning_rate: the optimiser's initial step.
        sigmas_in_physical_units: ``smoothing_sigmas`` in mm (ITK's default) or in voxels.

    Returns:
        (the final metric value with ITK's sign, lower is better; the optimiser's iterations at the last level).

    Raises:
        RuntimeError: ITK failed (e.g. the images do not overlap).
    """
    itk = import_itk()
    image_type = type(fixed)
    levels = [int(n) for n in level_iterations]
    metric = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New()
    metric.SetNumberOfHistogramBins(int(histogram_bins))
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New()
    optimizer.SetLearningRate(float(learning_rate))
    optimizer.SetMinimumStepLength(1e-3)
    optimizer.SetRelaxationFactor(0.6)
    optimizer.SetNumberOfIterations(levels[0])
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New()
    scales.SetMetric(metric)
    optimizer.SetScalesEstimator(scales)

    registration = itk.ImageRegistrationMethodv4[image_type, image_type].New()
    registration.SetFixedImage(fixed)
    registration.SetMovingImage(moving)
    registration.SetMetric(metric)
    registration.SetOptimizer(optimizer)
    registration.SetInitialTransform(transform)
    registration.InPlaceOn()
    registration.SetNumberOfLevels(len(shrink_factors))
    registration.SetShrinkFactorsPerLevel([int(f) for f in shrink_factors])
    registration.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas])
    if not sigmas_in_physical_units:
        registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
    registration.SetMetricSamplingPercentage(float(sampling_fraction))
    registration.MetricSamplingReinitializeSeed(int(seed))

    def set_iterations() -> None:  # ITK announces each level before optimising it
        optimizer.SetNumberOfIterations(levels[min(registration.GetCurrentLevel(), len(levels) - 1)])

    registration.AddObserver(itk.MultiResolutionIterationEvent(), set_iterations)
    registration.Update()
    return float(optimizer.GetValue()), int(optimizer.GetCurrentIteration())
