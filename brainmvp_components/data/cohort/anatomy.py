"""Real anatomy and geometry: the MNI ICBM152 tissue maps shipped with nilearn, smooth random fields, and placing
a subject's brain in the BraTS/SRI24 field of view through a small random affine and a smooth deformation."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE, BRATS_ATLAS_SHAPE, atlas_grid

__all__ = ["MNI_FILES", "MNITissueMaps", "mni_file", "load_mni_tissue_maps", "nominal_brain", "nominal_tissues"]


@dataclass(frozen=True)
class MNITissueMaps:
    """Prepared 1 mm MNI maps (array order of the nilearn files) and derived distance maps (mm).

    ``depth``: distance to the outside of the brain; ``ventricle_distance``: distance to the lateral
    ventricles (0 inside); ``exterior_distance``: distance to sulcal CSF or the outside of the brain;
    ``hippocampus``: soft weight (0..1) of the hippocampi and medial temporal lobes.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    ventricle_distance: np.ndarray
    exterior_distance: np.ndarray
    hippocampus: np.ndarray
    brain_bbox: tuple[tuple[int, int], ...]
    brain_centre: np.ndarray


def _world_coordinates(affine: np.ndarray, shape: Sequence[int]) -> list[np.ndarray]:
    """World x, y, z of every voxel of a grid whose affine has no rotation (broadcastable arrays)."""
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError(f"expected an axis-aligned affine, got {affine}")
    coords = []
    for axis, n in enumerate(shape):
        c = affine[axis, axis] * np.arange(n, dtype=np.float32) + affine[axis, 3]
        coords.append(c.reshape([-1 if a == axis else 1 for a in range(3)]))
    return coords


MNI_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
"""ICBM 2009a/c symmetric maps inside the nilearn package (``nilearn/datasets/data``)."""


def mni_file(name: str) -> Path:
    """Path of a shipped MNI map (``"t1"``, ``"gm"``, ``"wm"``), found without importing ``nilearn.datasets``."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the embedded cohort needs the 'nilearn' package (its MNI tissue maps)")
    path = Path(spec.origin).parent / "datasets" / "data" / MNI_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"MNI {name} map not found at {path}; is the nilearn installation complete?")
    return path


@functools.lru_cache(maxsize=1)
def load_mni_tissue_maps() -> MNITissueMaps:
    """Load and prepare the MNI tissue maps once per process (cached).

    Reads the files behind ``nilearn.datasets.load_mni152_gm_template``, ``..._wm_template`` and
    ``load_mni152_brain_mask`` (at ``resolution=1``) directly and applies the same rules (maps scaled by their
    maximum; brain mask = T1 template above 0.2 of its maximum), which avoids importing ``nilearn.datasets``.
    CSF is the brain mask minus grey and white matter, clipped to [0, 1]. Everything is cropped to the brain
    with a margin.
    """
    images = {name: nib.load(mni_file(name)) for name in MNI_FILES}
    data = {name: np.asarray(img.dataobj, dtype=np.float32) for name, img in images.items()}
    affine = np.asarray(images["gm"].affine, dtype=np.float64)
    for name, img in images.items():
        if img.shape != images["gm"].shape or not np.allclose(img.affine, affine):
            raise ValueError(f"MNI {name} map {mni_file(name)} is not on the grid of the grey-matter map")
    for name in data:
        data[name] /= max(float(data[name].max()), 1e-6)
    brain = data["t1"] > 0.2

    # crop to the brain plus a margin (keeps every later operation and the cache small)
    margin = 6
    idx = np.nonzero(brain)
    crop = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)
    affine = affine @ _translation(np.array([c.start for c in crop], dtype=np.float64))
    brain = brain[crop]
    mask = brain.astype(np.float32)
    gm = np.clip(data["gm"][crop], 0.0, 1.0) * mask
    wm = np.clip(data["wm"][crop], 0.0, 1.0) * mask
    tissue = gm + wm
    over = tissue > 1.0
    gm[over] /= tissue[over]
    wm[over] /= tissue[over]
    csf = np.clip(mask - gm - wm, 0.0, 1.0)

    x, y, z = _world_coordinates(affine, gm.shape)
    # lateral ventricles: large CSF components near the midline
    central = (np.abs(x) < 30) & (y > -50) & (y < 35) & (z > -5) & (z < 40)
    components, n = ndi.label((csf > 0.5) & central & brain)
    sizes = ndi.sum_labels(np.ones_like(csf), components, index=np.arange(1, n + 1))
    ventricles = np.isin(components, 1 + np.flatnonzero(sizes >= 1000))
    if not ventricles.any():
        raise RuntimeError("could not locate the lateral ventricles in the MNI CSF map")
    exterior = ~brain | ((csf > 0.5) & ~ndi.binary_dilation(ventricles, iterations=2))

    spacing = np.abs(np.diag(affine)[:3])
    # depth only guides tumour placement: a 2 mm estimate is plenty
    coarse = ndi.distance_transform_edt(brain[::2, ::2, ::2], sampling=2 * spacing).astype(np.float32)
    depth = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)[: gm.shape[0], : gm.shape[1], : gm.shape[2]]
    # ventricle distance matters within a few mm of the ventricles: compute it around them only
    near = tuple(slice(max(int(i.min()) - 12, 0), int(i.max()) + 13) for i in np.nonzero(ventricles))
    ventricle_distance = np.full(gm.shape, 100.0, dtype=np.float32)
    ventricle_distance[near] = ndi.distance_transform_edt(~ventricles[near], sampling=spacing)
    # exterior distance matters up to ~3 mm (cortical thinning): the mean of the chessboard and taxicab chamfer
    # distances (exact along the axes, within 16% of Euclidean along diagonals) is enough and far cheaper
    exterior_distance = (
        0.5
        * float(spacing.mean())
        * (
            ndi.distance_transform_cdt(~exterior, metric="chessboard").astype(np.float32)
            + ndi.distance_transform_cdt(~exterior, metric="taxicab").astype(np.float32)
        )
    )

    # hippocampi and medial temporal lobes: ellipsoids around (+-27, -22, -14) mm, long axis antero-posterior
    hippocampus = np.zeros_like(gm)
    for side in (-1.0, 1.0):
        r2 = ((x - side * 27.0) / 8.0) ** 2 + ((y + 22.0) / 17.0) ** 2 + ((z + 14.0) / 9.0) ** 2
        hippocampus = np.maximum(hippocampus, np.exp(-r2).astype(np.float32))

    idx = np.nonzero(brain)
    bbox = tuple((int(i.min()), int(i.max())) for i in idx)
    centre_vox = np.array([(lo + hi) / 2.0 for lo, hi in bbox] + [1.0])
    return MNITissueMaps(
        affine=affine,
        gm=np.ascontiguousarray(gm),
        wm=np.ascontiguousarray(wm),
        csf=np.ascontiguousarray(csf),
        mask=np.ascontiguousarray(mask),
        depth=np.ascontiguousarray(depth),
        ventricle_distance=ventricle_distance,
        exterior_distance=exterior_distance,
        hippocampus=hippocampus,
        brain_bbox=bbox,
        brain_centre=(affine @ centre_vox)[:3],
    )


def _interpolation_matrix(positions: np.ndarray, n_control: int) -> np.ndarray:
    """Gaussian weights (rows of unit L2 norm) from control points on [0, 1] to ``positions`` (normalised)."""
    control = np.linspace(0.0, 1.0, n_control)
    width = 0.6 / max(n_control - 1, 1)
    w = np.exp(-0.5 * ((positions[:, None] - control[None, :]) / width) ** 2)
    return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, control_shape: Sequence[int], positions: Sequence[np.ndarray]):
    """Smooth random field with unit variance at every point, evaluated on the grid ``positions``.

    ``positions``: three 1-D arrays of normalised coordinates (0..1 spans the control grid). The field is the
    separable Gaussian interpolation of i.i.d. normal control values, so it costs O(voxels x control points).
    """
    values = rng.standard_normal(tuple(control_shape)).astype(np.float32)
    wx, wy, wz = (_interpolation_matrix(np.asarray(p, dtype=np.float64), n) for p, n in zip(positions, control_shape))
    field = np.tensordot(wx, values, axes=(1, 0))  # (I, b, c)
    field = np.tensordot(field, wy, axes=(1, 1))  # (I, c, J)
    field = np.tensordot(field, wz, axes=(1, 1))  # (I, J, K)
    return field


def _translation(t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


@dataclass
class _Placement:
    """Where the subject's brain lands in the output grid and how output voxels map to MNI voxels."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    box: tuple[slice, slice, slice]
    mni_coords: np.ndarray  # (3, *box shape) MNI voxel coordinates of the box voxels
    scale: float


def _place_subject(rng: np.random.Generator, spacing: float, maps: MNITissueMaps) -> _Placement:
    """Random affine (rotation, scale, shift) plus smooth deformation from the atlas grid to MNI voxels."""
    shape, out_affine = atlas_grid(spacing)
    fov_centre = (BRATS_ATLAS_AFFINE @ np.array([(n - 1) / 2.0 for n in BRATS_ATLAS_SHAPE] + [1.0]))[:3]

    angles = rng.uniform(-4.0, 4.0, size=3)
    scale = float(rng.uniform(0.90, 1.10))
    scales = scale * rng.uniform(0.97, 1.03, size=3)
    shift = rng.uniform(-3.0, 3.0, size=3)
    forward = np.eye(4)  # MNI world -> subject world, both RAS+ mm, around the FOV centre
    forward[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(scales)
    forward = _translation(fov_centre + shift) @ forward @ _translation(-maps.brain_centre)
    out_to_mni = np.linalg.inv(maps.affine) @ np.linalg.inv(forward) @ out_affine  # output voxel -> MNI voxel

    displacement_mm = 2.5
    # output voxels that can see the brain: MNI brain box corners mapped back, padded for the deformation
    lo_hi = [(lo - 2, hi + 2) for lo, hi in maps.brain_bbox]
    corners = np.array([[a, b, c, 1.0] for a in lo_hi[0] for b in lo_hi[1] for c in lo_hi[2]]).T
    corners_out = (np.linalg.inv(out_to_mni) @ corners)[:3]
    pad = 4.0 * displacement_mm / spacing + 2
    box = tuple(
        slice(max(int(np.floor(corners_out[a].min() - pad)), 0), min(int(np.ceil(corners_out[a].max() + pad)) + 1, n))
        for a, n in enumerate(shape)
    )
    index = [np.arange(s.start, s.stop, dtype=np.float32) for s in box]

    # smooth random displacement (mm, in subject space), control grid over the whole field of view
    positions = [i / max(n - 1, 1) for i, n in zip(index, shape)]
    disp = [displacement_mm * _smooth_field(rng, (6, 6, 5), positions) for _ in range(3)]
    # express it in output voxels so it composes before the affine
    out_inv = np.linalg.inv(out_affine[:3, :3])
    grid = [
        index[a].reshape([-1 if b == a else 1 for b in range(3)])
        + sum(out_inv[a, c] * disp[c] for c in range(3) if out_inv[a, c] != 0)
        for a in range(3)
    ]
    coords = np.empty((3,) + tuple(s.stop - s.start for s in box), dtype=np.float32)
    for a in range(3):
        coords[a] = out_to_mni[a, 0] * grid[0] + out_to_mni[a, 1] * grid[1] + out_to_mni[a, 2] * grid[2]
        coords[a] += out_to_mni[a, 3]
    return _Placement(shape=shape, affine=out_affine, box=box, mni_coords=coords, scale=scale)


def _nominal_placement(spacing: float) -> tuple[MNITissueMaps, tuple[int, ...], np.ndarray, np.ndarray]:
    """The maps, the atlas grid at ``spacing`` and the matrix from its voxels to MNI voxels, unvaried."""
    maps = load_mni_tissue_maps()
    shape, out_affine = atlas_grid(spacing)
    fov_centre = (BRATS_ATLAS_AFFINE @ np.array([(n - 1) / 2.0 for n in BRATS_ATLAS_SHAPE] + [1.0]))[:3]
    forward = _translation(fov_centre) @ _translation(-maps.brain_centre)
    return maps, shape, out_affine, np.linalg.inv(maps.affine) @ np.linalg.inv(forward) @ out_affine


def nominal_tissues(spacing: float = 2.0) -> dict[str, np.ndarray]:
    """Grey matter, white matter and CSF fractions (``gm``, ``wm``, ``csf``) and the brain ``mask`` of the nominal
    brain (:func:`nominal_brain`) on ``atlas_grid(spacing)``."""
    maps, shape, _, out_to_mni = _nominal_placement(spacing)
    out = {
        name: ndi.affine_transform(
            getattr(maps, name).astype(np.float32), out_to_mni[:3, :3], out_to_mni[:3, 3], output_shape=shape, order=1
        )
        for name in ("gm", "wm", "csf", "mask")
    }
    out["mask"] = out["mask"] >= 0.5
    return out


def nominal_brain(spacing: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cohort's brain before any subject's variation: the MNI brain at the centre of the atlas field of view,
    unrotated, unscaled and undeformed (the placement every subject varies around).

    Returns:
        ``(t1_like, mask, affine)`` on ``atlas_grid(spacing)``: a T1-weighted-like image (white matter 1, grey
        matter 0.6, CSF 0.15 inside the brain, 0 outside), the brain mask, and the grid's affine. A hospital
        study is aligned to this image to enter the frame the cohort, and the models trained on it, share.
    """
    tissues = nominal_tissues(spacing)
    t1_like = 0.15 * tissues["csf"] + 0.6 * tissues["gm"] + 1.0 * tissues["wm"]
    return np.where(tissues["mask"], t1_like, 0.0).astype(np.float32), tissues["mask"], atlas_grid(spacing)[1]


def _sample(volume: np.ndarray, coords: np.ndarray, cval: float = 0.0) -> np.ndarray:
    return ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=cval, prefilter=False)


def _paste(sub: np.ndarray, placement: _Placement) -> np.ndarray:
    full = np.zeros(placement.shape, dtype=sub.dtype)
    full[placement.box] = sub
    return full
