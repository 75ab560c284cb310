"""Affine registration of the distilled modality templates to a case, with ITK.

The templates live in the BraTS/SRI24 atlas frame (:mod:`brainmvp_components.data.atlas`). A case registered to that
frame can take its templates by world coordinates; any other scan (an MNI-frame image, a patient's native scan)
first needs the transform between the two frames. :func:`register_to_template` estimates it: an affine
registration (12 degrees of freedom) of one template to one channel of the case, by Mattes mutual information,
multi-resolution, initialised by aligning the images' centres of mass (and their sizes, from second moments).
Mutual information does not need the two images to share a contrast, so any template can be registered to any
channel; the best pairing is a template of a modality the case has to that modality's channel.

Conventions: NIfTI/MONAI affines map voxels to RAS world millimetres; ITK works in LPS. The transform returned
is a ``(4, 4)`` RAS matrix ``T`` mapping a point of the case's world to the matching point of the template
world, so the template is sampled on the case grid ``(affine, shape)`` at the positions ``T @ affine``:
``templates.resample_to_grid(modality, T @ affine, shape)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE, BRATS_ATLAS_SHAPE
from brainmvp_components.transforms.itk_bridge import block_mean as _block_mean
from brainmvp_components.transforms.itk_bridge import import_itk as _itk
from brainmvp_components.transforms.itk_bridge import ras_matrix as _transform_matrix
from brainmvp_components.transforms.itk_bridge import run_mattes_registration, volume_moments
from brainmvp_components.transforms.itk_bridge import set_ras_matrix as _set_matrix
from brainmvp_components.transforms.itk_bridge import to_itk_image as _to_itk

__all__ = [
    "TemplateRegistration",
    "RegistrationError",
    "register_to_template",
    "in_atlas_frame",
    "foreground_coverage",
]

logger = logging.getLogger(__name__)


class RegistrationError(RuntimeError):
    """ITK could not register the template to the case."""


@dataclass
class TemplateRegistration:
    """The outcome of one registration.

    Attributes:
        transform: ``(4, 4)`` RAS matrix from the case's world (mm) to the template world (mm).
        method: ``"affine_mutual_information"`` (registered), ``"moments"`` (the registration failed; centres of
            mass and sizes aligned only) or ``"atlas_frame"`` (no registration: the case is in the
            templates' frame, identity).
        fixed_modality: the case channel registered to (``None`` for ``"atlas_frame"``).
        template_modality: the template registered (``None`` for ``"atlas_frame"``).
        quality: figures of merit: ``mutual_information`` (Mattes, at the finest level, higher is better),
            ``seconds``; :class:`~brainmvp_components.transforms.impute.ImputeMissingModalities` adds
            ``coverage`` (fraction of the case's foreground where the imputed templates are non-zero).
    """

    transform: np.ndarray
    method: str
    fixed_modality: str | None = None
    template_modality: str | None = None
    quality: dict[str, float] = field(default_factory=dict)

    def as_record(self) -> dict:
        """JSON-ready dictionary (the transform as nested lists, rounded to 6 decimals)."""
        return {
            "method": self.method,
            "fixed_modality": self.fixed_modality,
            "template_modality": self.template_modality,
            "transform_case_to_template_ras": np.round(self.transform, 6).tolist(),
            "quality": {k: (None if not math.isfinite(v) else round(float(v), 4)) for k, v in self.quality.items()},
        }


def in_atlas_frame(
    affine: np.ndarray,
    shape: Sequence[int],
    atlas_affine: np.ndarray = BRATS_ATLAS_AFFINE,
    atlas_shape: Sequence[int] = BRATS_ATLAS_SHAPE,
    tolerance_mm: float = 5.0,
) -> bool:
    """Whether a grid covers the atlas field of view in the atlas orientation (a BraTS-frame image).

    True when the grid's axes are parallel to the atlas's (any flips or order) and the world bounding box of its
    voxel centres matches the atlas's within ``tolerance_mm`` plus one voxel on every side. Such images take their
    templates by world coordinates without registration.
    """
    affine = np.asarray(affine, dtype=np.float64)
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(np.abs(directions), np.round(np.abs(directions)), atol=1e-3):
        return False

    def box(a: np.ndarray, s: Sequence[int]) -> np.ndarray:
        corners = np.array(np.meshgrid(*[[0.0, n - 1.0] for n in s], indexing="ij")).reshape(3, -1)
        world = a[:3, :3] @ corners + a[:3, 3:4]
        return np.stack([world.min(axis=1), world.max(axis=1)])

    spacing = float(np.linalg.norm(affine[:3, :3], axis=0).max())
    difference = np.abs(box(affine, shape) - box(np.asarray(atlas_affine, dtype=np.float64), atlas_shape))
    return bool(difference.max() <= tolerance_mm + spacing)


def foreground_coverage(covering: np.ndarray, foreground: np.ndarray, threshold: float = 1e-3) -> float:
    """Fraction of the ``foreground`` voxels (boolean mask) where ``covering`` exceeds ``threshold``."""
    foreground = np.asarray(foreground, dtype=bool)
    if not foreground.any():
        return float("nan")
    return float((np.asarray(covering)[foreground] > threshold).mean())


def foreground_mask(volume: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels above ``fraction`` of the volume's 99th percentile: the head or brain of a background-zero scan."""
    volume = np.asarray(volume, dtype=np.float32)
    high = float(np.percentile(volume, 99)) if volume.size else 0.0
    return volume > fraction * high if high > 0 else np.zeros(volume.shape, dtype=bool)


def register_to_template(
    case_volume: np.ndarray,
    case_affine: np.ndarray,
    template_volume: np.ndarray,
    template_affine: np.ndarray,
    fixed_modality: str | None = None,
    template_modality: str | None = None,
    level_spacings_mm: Sequence[float] = (8.0, 4.0),
    iterations: Sequence[int] = (200, 100),
    sampling_fraction: float = 0.25,
    histogram_bins: int = 32,
    seed: int = 0,
    transform_type: str = "affine",
) -> TemplateRegistration:
    """Register a template to one channel of a case (affine, Mattes mutual information, multi-resolution).

    Args:
        case_volume: the case channel ``(H, W, D)`` (background near zero, e.g. after percentile scaling).
        case_affine: its ``(4, 4)`` RAS voxel-to-world affine.
        template_volume: the template ``(H', W', D')`` on its own grid.
        template_affine: the template's ``(4, 4)`` RAS affine.
        fixed_modality, template_modality: recorded in the result.
        level_spacings_mm: the working resolution of each level, coarse to fine: the case is shrunk by an integer
            factor to about this spacing (never below its own). Coarse levels keep it to seconds per case.
        iterations: optimiser iterations per level.
        sampling_fraction: fraction of the case's voxels sampled (randomly) for the metric at each level.
        histogram_bins: Mattes mutual information histogram bins.
        seed: seed of the metric's random sampling (repeatable results).
        transform_type: ``"affine"`` (12 degrees of freedom) or ``"similarity"`` (rotation, translation and one
            scale: 7). A blurred template constrains shear and per-axis scale poorly; a similarity keeps the
            brain's shape and leaves its size free.

    Returns:
        the registration (``method="affine_mutual_information"`` or ``"similarity_mutual_information"``).

    Raises:
        RegistrationError: ITK failed (e.g. the images do not overlap after initialisation).
    """
    import time

    itk = _itk()
    if len(level_spacings_mm) != len(iterations):
        raise ValueError(f"one iteration count per level: {list(level_spacings_mm)} vs {list(iterations)}")
    start = time.perf_counter()
    finest = float(min(level_spacings_mm))
    case_small, case_small_affine = _block_mean(case_volume, case_affine, finest)
    template_small, template_small_affine = _block_mean(template_volume, template_affine, finest)
    fixed = _to_itk(case_small, case_small_affine)
    moving = _to_itk(template_small, template_small_affine)
    if transform_type not in ("affine", "similarity"):
        raise ValueError(f"transform_type must be 'affine' or 'similarity', got {transform_type!r}")
    try:
        if transform_type == "affine":
            initial = itk.AffineTransform[itk.D, 3].New()
        else:  # rotations about the brain's centre, not the world origin, keep the parameters well scaled
            initial = itk.Similarity3DTransform[itk.D].New()
            centre = _moments(case_volume, case_affine)[0]
            initial.SetCenter([float(-centre[0]), float(-centre[1]), float(centre[2])])
        _set_matrix(initial, _moments_transform(case_volume, case_affine, template_volume, template_affine))

        case_spacing = float(np.linalg.norm(np.asarray(case_small_affine, dtype=np.float64)[:3, :3], axis=0).min())
        shrink = [max(1, int(round(s / case_spacing))) for s in level_spacings_mm]
        value, _ = run_mattes_registration(
            fixed, moving, initial, shrink_factors=shrink, smoothing_sigmas=[max(0.0, (f - 1) / 2.0) for f in shrink],
            level_iterations=iterations, sampling_fraction=sampling_fraction, seed=seed, histogram_bins=histogram_bins,
        )  # fmt: skip
    except RuntimeError as err:
        raise RegistrationError(
            f"ITK {transform_type} registration failed: {str(err).strip().splitlines()[-1]}"
        ) from err
    transform = _transform_matrix(initial)
    return TemplateRegistration(
        transform=transform,
        method=f"{transform_type}_mutual_information",
        fixed_modality=fixed_modality,
        template_modality=template_modality,
        quality={"mutual_information": -value, "seconds": time.perf_counter() - start},
    )


def _moments(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`volume_moments`, raising :class:`RegistrationError` for an empty image."""
    try:
        return volume_moments(volume, affine)
    except ValueError as err:
        raise RegistrationError(str(err)) from err


def _moments_transform(
    case_volume: np.ndarray, case_affine: np.ndarray, template_volume: np.ndarray, template_affine: np.ndarray
) -> np.ndarray:
    """RAS case-to-template matrix aligning centres of mass, with the isotropic scale of the second moments."""
    case_centre, case_spread = _moments(case_volume, case_affine)
    template_centre, template_spread = _moments(template_volume, template_affine)
    ratio = np.linalg.det(template_spread) / max(np.linalg.det(case_spread), 1e-12)
    scale = float(np.clip(ratio ** (1 / 6), 0.5, 2.0)) if ratio > 0 else 1.0
    matrix = np.eye(4)
    matrix[:3, :3] *= scale
    matrix[:3, 3] = template_centre - scale * case_centre
    return matrix


def moments_alignment(
    case_volume: np.ndarray,
    case_affine: np.ndarray,
    template_volume: np.ndarray,
    template_affine: np.ndarray,
    fixed_modality: str | None = None,
    template_modality: str | None = None,
) -> TemplateRegistration:
    """The fallback when registration fails: centres of mass aligned, isotropic scale from the second moments."""
    return TemplateRegistration(
        transform=_moments_transform(case_volume, case_affine, template_volume, template_affine),
        method="moments",
        fixed_modality=fixed_modality,
        template_modality=template_modality,
    )
