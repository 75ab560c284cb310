"""The atlas grid that templates and the embedded cohort share.

BraTS releases are co-registered to SRI24 at 1 mm on a 240 x 240 x 155 grid whose NIfTI affine maps
voxel ``(i, j, k)`` to ``(-i, 239 - j, k)`` mm. The distilled modality templates live on this grid, and
the embedded cohort is written on it (or on a coarser grid covering the same field of view), so a
template crop taken at a sample's physical location shows the same anatomy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BRATS_ATLAS_SHAPE", "BRATS_ATLAS_AFFINE", "atlas_grid"]

BRATS_ATLAS_SHAPE: tuple[int, int, int] = (240, 240, 155)
BRATS_ATLAS_AFFINE: np.ndarray = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def atlas_grid(spacing: float = 1.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the BraTS atlas field of view sampled every ``spacing`` mm.

    The first voxel centre stays where it is at 1 mm, so grids at different spacings overlap exactly.
    """
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    shape = tuple(int(np.ceil(n / spacing)) for n in BRATS_ATLAS_SHAPE)
    affine = BRATS_ATLAS_AFFINE.copy()
    affine[:3, :3] = affine[:3, :3] * spacing
    return shape, affine
