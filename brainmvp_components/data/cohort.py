"""The embedded cohort: synthetic multi-parametric brain MRI on real anatomy.

Every bundle runs out of the box on this cohort, and every test uses it. Subjects start from the real
ICBM 2009c nonlinear symmetric tissue probability maps that ship inside ``nilearn`` (grey matter, white
matter and a brain mask; no download), are placed in the BraTS/SRI24 field of view
(:func:`brainmvp_components.data.atlas.atlas_grid`) through a smooth per-subject deformation and a small
random affine, receive tumours (``brats``, part of ``pretrain``) or simulated atrophy (``adni``), and are
imaged with MR signal equations:

- spin echo: ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` (t1, t1c, t2, pd, with per-sequence TR/TE);
- inversion recovery (flair): ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)`` with the inversion
  time that nulls cerebrospinal fluid.

Voxel intensity is the tissue-fraction weighted sum of the tissue signals, times a smooth bias field,
with Rician noise and a global scale; the background outside the brain is zero (skull-stripped, as in
BraTS). Each subject draws its randomness from ``np.random.SeedSequence([seed, index, kind code])``, so a
subject does not depend on how many subjects are generated, and the same seed gives the same bytes.

Typical use::

    from brainmvp_components.data.cohort import make_cohort

    cases = make_cohort("data/brats_syn", "brats", subjects=8, seed=0, spacing=2.0)
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE, BRATS_ATLAS_SHAPE, atlas_grid
from brainmvp_components.data.brats import BRATS_CONVENTIONS, NECROSIS_LABEL, OEDEMA_LABEL
from brainmvp_components.utils.writers import atomic_write, write_csv

__all__ = [
    "COHORT_KINDS",
    "LABEL_CONVENTIONS",
    "COHORT_MODALITIES",
    "TISSUES",
    "TissueParameters",
    "TISSUE_PARAMETERS",
    "GADOLINIUM_T1",
    "SequenceParameters",
    "SEQUENCES",
    "PREVIEW_DIR_NAME",
    "spin_echo_signal",
    "inversion_recovery_signal",
    "csf_null_inversion_time",
    "load_mni_tissue_maps",
    "MNITissueMaps",
    "case_id",
    "modality_file_suffix",
    "label_values",
    "subject_design",
    "synthesise_subject",
    "tissue_signals",
    "mni_file",
    "make_cohort",
]

logger = logging.getLogger(__name__)

COHORT_KINDS: tuple[str, ...] = ("pretrain", "brats", "adni")
LABEL_CONVENTIONS: tuple[str, ...] = tuple(BRATS_CONVENTIONS)
COHORT_MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair", "pd")
"""Canonical names of the contrasts the cohort can synthesise."""

TISSUES: tuple[str, ...] = ("gm", "wm", "csf", "oedema", "enhancing", "necrosis")
"""Tissue classes whose fractions make up every voxel."""

PREVIEW_DIR_NAME = ".previews"
"""Preview PNGs go to ``out_dir/.previews``: hidden, so case discovery does not take it for a case."""

_KIND_CODES = {"pretrain": 0, "brats": 1, "adni": 2}
_CASE_PREFIX = {"pretrain": "PRETRAIN-SYN", "brats": "BraTS-SYN", "adni": "ADNI-SYN"}
_FILE_SUFFIX = {
    "brats2021": {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "pd": "pd"},
    "brats2023": {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", "pd": "pd"},
}
_LABEL_VALUES = {
    name: {"necrosis": NECROSIS_LABEL, "oedema": OEDEMA_LABEL, "enhancing": enhancing}
    for name, enhancing in BRATS_CONVENTIONS.items()
}
_ADNI_DIAGNOSES = ("CN", "AD")


# --------------------------------------------------------------------------------------------------------------
# MR physics
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TissueParameters:
    """Relaxation times (ms) and relative proton density of one tissue."""

    t1: float
    t2: float
    pd: float


TISSUE_PARAMETERS: dict[str, TissueParameters] = {
    "wm": TissueParameters(t1=830.0, t2=80.0, pd=0.70),
    "gm": TissueParameters(t1=1330.0, t2=110.0, pd=0.80),
    "csf": TissueParameters(t1=4000.0, t2=2000.0, pd=1.00),
    "oedema": TissueParameters(t1=1700.0, t2=250.0, pd=0.90),
    "enhancing": TissueParameters(t1=1400.0, t2=120.0, pd=0.85),
    "necrosis": TissueParameters(t1=3000.0, t2=800.0, pd=0.95),
}
"""Nominal tissue parameters at 1.5-3 T (literature-typical values); each subject jitters them."""

GADOLINIUM_T1: dict[str, float] = {"enhancing": 400.0}
"""T1 (ms) after gadolinium for tissues whose blood-brain barrier is broken; other tissues keep their T1."""


@dataclass(frozen=True)
class SequenceParameters:
    """One acquisition: repetition and echo times (ms); inversion recovery (TI nulls CSF) or spin echo."""

    tr: float
    te: float
    inversion: bool = False
    contrast_agent: bool = False


SEQUENCES: dict[str, SequenceParameters] = {
    "t1": SequenceParameters(tr=500.0, te=10.0),
    "t1c": SequenceParameters(tr=500.0, te=10.0, contrast_agent=True),
    "t2": SequenceParameters(tr=4000.0, te=100.0),
    "flair": SequenceParameters(tr=9000.0, te=90.0, inversion=True),
    "pd": SequenceParameters(tr=5000.0, te=15.0),
}
"""Nominal protocol per modality: T1w short TR/TE, T2w long TR/TE, PD long TR/short TE, FLAIR with CSF nulled."""


def spin_echo_signal(pd, t1, t2, tr: float, te: float):
    """Spin-echo signal ``PD (1 - exp(-TR/T1)) exp(-TE/T2)`` (scalars or arrays, times in ms)."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery_signal(pd, t1, t2, tr: float, te: float, ti: float):
    """Magnitude inversion-recovery signal ``PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``."""
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def csf_null_inversion_time(tr: float, t1_csf: float = TISSUE_PARAMETERS["csf"].t1) -> float:
    """Inversion time (ms) that nulls a tissue of longitudinal relaxation ``t1_csf`` at repetition time ``tr``."""
    return float(t1_csf * np.log(2.0 / (1.0 + np.exp(-tr / t1_csf))))


# --------------------------------------------------------------------------------------------------------------
# Real anatomy: the MNI ICBM152 2009c maps shipped with nilearn
# --------------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------------
# Random fields and geometry
# --------------------------------------------------------------------------------------------------------------
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


def _sample(volume: np.ndarray, coords: np.ndarray, cval: float = 0.0) -> np.ndarray:
    return ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=cval, prefilter=False)


# --------------------------------------------------------------------------------------------------------------
# Pathology
# --------------------------------------------------------------------------------------------------------------
def _add_tumours(rng: np.random.Generator, fractions: dict[str, np.ndarray], depth_at, spacing: float):
    """Insert 1-3 irregular tumours (oedema around an enhancing core around a necrotic centre), in place.

    ``depth_at(flat_indices) -> mm``: distance of voxels to the outside of the brain (tumours stay inside).
    Returns the internal label map (1 necrosis, 2 oedema, 3 enhancing) and the number of tumours.
    """
    shape = fractions["gm"].shape
    parenchyma = fractions["gm"] + fractions["wm"]
    labels = np.zeros(shape, dtype=np.uint8)
    solid = np.flatnonzero(parenchyma > 0.8)[::3]
    solid_depth = depth_at(solid)
    n_tumours = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    for _ in range(n_tumours):
        r_core = float(rng.uniform(10.0, 22.0))
        r_oedema = min(r_core * float(rng.uniform(1.3, 1.8)), 30.0)
        r_necrosis = r_core * float(rng.uniform(0.5, 0.8)) if rng.random() < 0.85 else 0.0
        candidates = solid[solid_depth >= r_core + 6.0]
        if candidates.size == 0:
            candidates = solid[solid_depth >= np.percentile(solid_depth, 95)]
        centre = np.array(np.unravel_index(int(candidates[rng.integers(candidates.size)]), shape))
        half = int(np.ceil(1.6 * r_oedema / spacing))
        box = tuple(slice(max(c - half, 0), min(c + half + 1, n)) for c, n in zip(centre, shape))
        offsets = [(np.arange(s.start, s.stop) - c) * spacing for s, c in zip(box, centre)]
        rot = Rotation.random(random_state=rng).as_matrix()
        axes = rng.uniform(0.75, 1.3, size=3)
        d = [o.reshape([-1 if b == a else 1 for b in range(3)]) for a, o in enumerate(offsets)]
        local = [(rot[0, a] * d[0] + rot[1, a] * d[1] + rot[2, a] * d[2]) / axes[a] for a in range(3)]
        radius = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
        positions = [(o - o[0]) / max(o[-1] - o[0], 1e-6) for o in offsets]

        def region(r: float, amplitude: float, radius=radius, positions=positions) -> np.ndarray:
            """Voxels within ``r`` mm of the centre, the boundary perturbed by smooth noise of ``amplitude``."""
            return radius / r + amplitude * _smooth_field(rng, (7, 7, 7), positions) < 1.0

        sub_parenchyma = parenchyma[box]
        sub_csf = fractions["csf"][box]
        core = region(r_core, 0.18) & (sub_parenchyma > 0.3)
        core |= radius <= 0.5 * r_core  # the centre always belongs to the core
        # oedema spreads further along white matter and does not enter CSF spaces
        noise = _smooth_field(rng, (7, 7, 7), positions)
        oedema = ((radius / r_oedema + 0.2 * noise - 0.15 * fractions["wm"][box]) < 1.0) & (sub_csf < 0.5)
        oedema = (oedema & (sub_parenchyma > 0.2)) | core
        necrosis = np.zeros_like(core)
        if r_necrosis > 0:
            rim = max(1, int(round(2.5 / spacing)))  # the enhancing rim is at least one voxel thick
            necrosis = (region(r_necrosis, 0.15) | (radius <= 0.6 * r_necrosis)) & ndi.binary_erosion(
                core, iterations=rim
            )
        sub = labels[box]
        sub[(oedema & (sub == 0))] = 2
        sub[core & (sub != 1)] = 3
        sub[necrosis] = 1
    lesion = {
        "necrosis": (labels == 1).astype(np.float32),
        "oedema": (labels == 2).astype(np.float32),
        "enhancing": (labels == 3).astype(np.float32),
    }
    if labels.any():
        tumour_box = ndi.find_objects((labels > 0).astype(np.int8))[0]
        pad_box = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(tumour_box, shape))
        for name in lesion:  # partial volume at region borders
            lesion[name][pad_box] = ndi.gaussian_filter(lesion[name][pad_box], 0.5)
    total = lesion["necrosis"] + lesion["oedema"] + lesion["enhancing"]
    keep = np.clip(1.0 - total, 0.0, 1.0)
    inside = (fractions["gm"] + fractions["wm"] + fractions["csf"]) > 0
    for name in ("gm", "wm", "csf"):
        fractions[name] *= keep
    for name, value in lesion.items():
        fractions[name] = value * inside
    return labels, n_tumours


def _add_atrophy(
    fractions: dict[str, np.ndarray],
    ventricle_distance: np.ndarray,
    exterior_distance: np.ndarray,
    hippocampus: np.ndarray,
    severity: float,
    ventricle_base_mm: float,
    cortex_base_mm: float,
) -> None:
    """Atrophy of graded ``severity`` (0..1), in place: tissue turns into CSF.

    Ventricles dilate by ``ventricle_base_mm + 4.5 severity`` mm, cortical grey matter thins by
    ``cortex_base_mm + 1.6 severity`` mm from the CSF side, and hippocampal/medial-temporal grey matter
    loses up to ``65 severity`` percent.
    """
    gm, wm, csf = fractions["gm"], fractions["wm"], fractions["csf"]
    ventricle = np.clip(ventricle_base_mm + 4.5 * severity - ventricle_distance + 0.5, 0.0, 1.0)
    thinning = np.clip(cortex_base_mm + 1.6 * severity - exterior_distance + 0.5, 0.0, 1.0)
    gm_loss = np.clip(np.maximum(ventricle, thinning) + 0.65 * severity * hippocampus, 0.0, 1.0) * gm
    wm_loss = ventricle * wm
    fractions["gm"] = gm - gm_loss
    fractions["wm"] = wm - wm_loss
    fractions["csf"] = csf + gm_loss + wm_loss


# --------------------------------------------------------------------------------------------------------------
# Imaging
# --------------------------------------------------------------------------------------------------------------
def _jittered_tissues(rng: np.random.Generator) -> dict[str, TissueParameters]:
    return {
        name: TissueParameters(
            t1=p.t1 * float(np.exp(rng.normal(0.0, 0.05))),
            t2=p.t2 * float(np.exp(rng.normal(0.0, 0.05))),
            pd=p.pd * float(np.exp(rng.normal(0.0, 0.03))),
        )
        for name, p in TISSUE_PARAMETERS.items()
    }


def tissue_signals(modality: str, tissues: Mapping[str, TissueParameters], tr_scale=1.0, te_scale=1.0):
    """Signal of each tissue for one modality (``SEQUENCES[modality]`` with TR/TE scaled)."""
    seq = SEQUENCES[modality]
    tr, te = seq.tr * tr_scale, seq.te * te_scale
    signals = {}
    for name, p in tissues.items():
        t1 = GADOLINIUM_T1.get(name, p.t1) if seq.contrast_agent else p.t1
        if seq.inversion:
            signals[name] = float(inversion_recovery_signal(p.pd, t1, p.t2, tr, te, csf_null_inversion_time(tr)))
        else:
            signals[name] = float(spin_echo_signal(p.pd, t1, p.t2, tr, te))
    return signals


def _image(
    rng: np.random.Generator,
    modality: str,
    fractions: Mapping[str, np.ndarray],
    tissues: Mapping[str, TissueParameters],
    bias_at,
) -> np.ndarray:
    """Intensities of the brain voxels (1-D ``fractions``); ``bias_at(field)`` samples a smooth field there."""
    signals = tissue_signals(
        modality, tissues, tr_scale=float(rng.uniform(0.95, 1.05)), te_scale=float(rng.uniform(0.95, 1.05))
    )
    n = fractions["gm"].shape
    clean = np.zeros(n, dtype=np.float32)
    for name in TISSUES:
        clean += np.float32(signals[name]) * fractions[name]
    amplitude = float(rng.uniform(0.06, 0.15))
    clean *= np.exp(amplitude * bias_at(rng)).astype(np.float32)
    reference = max(signals["gm"], signals["wm"], signals["csf"])
    sigma = np.float32(rng.uniform(0.01, 0.03) * reference)
    noise = rng.standard_normal((2,) + n, dtype=np.float32) * sigma
    noisy = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2)
    scale = np.float32(np.exp(rng.uniform(np.log(400.0), np.log(3000.0))) / reference)
    return (noisy * scale).astype(np.float32)


def case_id(kind: str, index: int) -> str:
    """Case identifier: ``BraTS-SYN-00000``, ``PRETRAIN-SYN-00000`` or ``ADNI-SYN-00000``."""
    _check_kind(kind)
    return f"{_CASE_PREFIX[kind]}-{int(index):05d}"


def modality_file_suffix(modality: str, label_convention: str = "brats2021") -> str:
    """File-name token of a canonical modality in a naming convention (``t1c`` -> ``t1ce`` in BraTS 2021)."""
    _check_convention(label_convention)
    return _FILE_SUFFIX[label_convention][modality]


def label_values(label_convention: str = "brats2021") -> dict[str, int]:
    """Label value of each tumour region: ``necrosis``, ``oedema``, ``enhancing`` (4 in 2021, 3 in 2023)."""
    _check_convention(label_convention)
    return dict(_LABEL_VALUES[label_convention])


def _check_kind(kind: str) -> None:
    if kind not in COHORT_KINDS:
        raise ValueError(f"unknown cohort kind {kind!r}; expected one of {COHORT_KINDS}")


def _check_convention(label_convention: str) -> None:
    if label_convention not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown label convention {label_convention!r}; expected one of {LABEL_CONVENTIONS}")


def _check_arguments(kind: str, spacing: float, missing_rate: float, label_convention: str) -> None:
    _check_kind(kind)
    _check_convention(label_convention)
    if not np.isfinite(spacing) or spacing <= 0 or spacing > 8:
        raise ValueError(f"spacing must be a positive number of mm (at most 8), got {spacing}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")


def _subject_streams(kind: str, index: int, seed: int) -> list[np.random.SeedSequence]:
    """Independent streams of one subject: anatomy, design, pathology, tissue parameters, imaging."""
    return np.random.SeedSequence([int(seed), int(index), _KIND_CODES[kind]]).spawn(5)


def subject_design(
    kind: str, index: int, seed: int = 0, missing_rate: float = 0.3, tumour_probability: float = 0.5
) -> dict[str, Any]:
    """What a subject has, without synthesising it (cheap): ``modalities`` (canonical names), ``has_tumour``,
    and for ``adni`` ``class_label`` (index parity: 0 CN, 1 AD), ``diagnosis`` and ``severity`` (CN in
    [0, 0.2], AD in [0.45, 1])."""
    _check_kind(kind)
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    rng = np.random.default_rng(_subject_streams(kind, index, seed)[1])
    if kind == "brats":
        return {"modalities": ["t1", "t1c", "t2", "flair"], "has_tumour": True}
    if kind == "pretrain":
        present = rng.random(len(COHORT_MODALITIES)) >= missing_rate
        if not present.any():
            present[rng.integers(len(COHORT_MODALITIES))] = True
        modalities = [m for m, p in zip(COHORT_MODALITIES, present) if p]
        return {"modalities": modalities, "has_tumour": bool(rng.random() < tumour_probability)}
    class_label = int(index) % 2
    severity = float(rng.uniform(0.0, 0.2) if class_label == 0 else rng.uniform(0.45, 1.0))
    return {
        "modalities": ["t1"],
        "has_tumour": False,
        "class_label": class_label,
        "diagnosis": _ADNI_DIAGNOSES[class_label],
        "severity": severity,
    }


def synthesise_subject(
    kind: str,
    index: int,
    seed: int = 0,
    spacing: float = 2.0,
    missing_rate: float = 0.3,
    label_convention: str = "brats2021",
    tumour_probability: float = 0.5,
) -> dict[str, Any]:
    """Synthesise one subject in memory.

    Args:
        kind: ``"brats"`` (t1, t1c, t2, flair and a tumour label), ``"pretrain"`` (a random non-empty subset of
            t1, t1c, t2, flair, pd; tumours in some subjects; no label file) or ``"adni"`` (t1 only, CN or AD).
        index: subject index (non-negative); with ``seed`` it alone determines the subject.
        seed: cohort seed.
        spacing: output grid spacing in mm (the BraTS atlas field of view, ``atlas_grid(spacing)``).
        missing_rate: ``pretrain`` only: probability that each modality is absent.
        label_convention: ``"brats2021"`` (enhancing = 4) or ``"brats2023"`` (enhancing = 3).
        tumour_probability: ``pretrain`` only: probability that the subject has tumours.

    Returns:
        dict with ``case`` (str), ``kind``, ``affine`` (4x4, the atlas grid), ``images`` ({canonical modality:
        float32 (H, W, D)}), ``label`` (uint8 (H, W, D) in ``label_convention``; all zero without tumour),
        ``brain_mask`` (bool (H, W, D)), ``tissues`` ({gm, wm, csf, oedema, enhancing, necrosis: float32
        fractions (H, W, D)}), ``n_tumours`` (int), and for ``adni`` also ``class_label`` (0 CN, 1 AD),
        ``diagnosis`` and ``severity``.
    """
    _check_arguments(kind, spacing, missing_rate, label_convention)
    if int(index) != index or index < 0:
        raise ValueError(f"subject index must be a non-negative integer, got {index!r}")
    index = int(index)
    maps = load_mni_tissue_maps()
    streams = _subject_streams(kind, index, seed)
    rng_anatomy, rng_pathology, rng_tissue = (np.random.default_rng(streams[i]) for i in (0, 2, 3))

    placement = _place_subject(rng_anatomy, spacing, maps)
    coords = placement.mni_coords
    fractions = {name: _sample(getattr(maps, name), coords) for name in ("gm", "wm", "csf")}
    box_shape = fractions["gm"].shape
    for name in ("oedema", "enhancing", "necrosis"):
        fractions[name] = np.zeros(box_shape, dtype=np.float32)
    flat_coords = coords.reshape(3, -1)

    def sample_at(volume: np.ndarray, flat_index: np.ndarray, cval: float = 0.0) -> np.ndarray:
        return _sample(volume, flat_coords[:, flat_index], cval=cval)

    design = subject_design(kind, index, seed, missing_rate, tumour_probability)
    modalities, has_tumour = design["modalities"], design["has_tumour"]
    result: dict[str, Any] = {"case": case_id(kind, index), "kind": kind, "affine": placement.affine.copy()}
    if kind == "adni":
        result.update({k: design[k] for k in ("class_label", "diagnosis", "severity")})

    internal = np.zeros(box_shape, dtype=np.uint8)
    n_tumours = 0
    if has_tumour:
        internal, n_tumours = _add_tumours(
            rng_pathology, fractions, lambda i: sample_at(maps.depth, i) * placement.scale, spacing
        )
    if kind == "adni":
        tissue = np.flatnonzero(fractions["gm"] + fractions["wm"] > 0)
        local = {name: fractions[name].ravel()[tissue] for name in ("gm", "wm", "csf")}
        _add_atrophy(
            local,
            sample_at(maps.ventricle_distance, tissue, cval=100.0) * placement.scale,
            sample_at(maps.exterior_distance, tissue) * placement.scale,
            sample_at(maps.hippocampus, tissue),
            severity=result["severity"],
            ventricle_base_mm=float(rng_pathology.uniform(0.0, 1.5)),
            cortex_base_mm=float(rng_pathology.uniform(0.0, 0.4)),
        )
        for name, value in local.items():
            fractions[name].ravel()[tissue] = value

    mask = (fractions["gm"] + fractions["wm"] + fractions["csf"] + (internal > 0)) >= 0.5
    inside = np.flatnonzero(mask)
    voxel_fractions = {name: fractions[name].ravel()[inside] for name in TISSUES}
    positions = [np.arange(s.start, s.stop) / max(n - 1, 1) for s, n in zip(placement.box, placement.shape)]

    def bias_at(rng: np.random.Generator) -> np.ndarray:
        """A smooth unit-variance field over the field of view, at the brain voxels."""
        return _smooth_field(rng, (4, 4, 3), positions).ravel()[inside]

    tissues = _jittered_tissues(rng_tissue)
    imaging_streams = dict(zip(COHORT_MODALITIES, streams[4].spawn(len(COHORT_MODALITIES))))
    images = {}
    for modality in modalities:  # each modality has its own stream: the others' presence does not change it
        rng = np.random.default_rng(imaging_streams[modality])
        box_image = np.zeros(box_shape, dtype=np.float32)
        box_image.ravel()[inside] = _image(rng, modality, voxel_fractions, tissues, bias_at)
        images[modality] = _paste(box_image, placement)

    values = _LABEL_VALUES[label_convention]
    label = np.zeros(box_shape, dtype=np.uint8)
    label[internal == 1] = values["necrosis"]
    label[internal == 2] = values["oedema"]
    label[internal == 3] = values["enhancing"]
    label[~mask] = 0
    result.update(
        images=images,
        label=_paste(label, placement),
        brain_mask=_paste(mask, placement),
        tissues={name: _paste(fractions[name] * mask, placement) for name in TISSUES},
        n_tumours=n_tumours,
    )
    return result


def _paste(sub: np.ndarray, placement: _Placement) -> np.ndarray:
    full = np.zeros(placement.shape, dtype=sub.dtype)
    full[placement.box] = sub
    return full


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------
def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 file atomically; gzip without a time stamp so the bytes depend only on the data."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = image.to_bytes()
    if path.name.endswith(".gz"):
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=buffer, mtime=0) as gz:
            gz.write(data)
        data = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _write_labels_csv(rows: list[dict[str, Any]], path: Path) -> None:
    rows = [{**row, "severity": f"{row['severity']:.4f}"} for row in rows]
    write_csv(path, rows, ["case", "label", "diagnosis", "severity"])


def make_cohort(
    out_dir: str | os.PathLike,
    kind: str,
    subjects: int,
    seed: int = 0,
    spacing: float = 2.0,
    missing_rate: float = 0.3,
    label_convention: str = "brats2021",
    preview: bool = False,
) -> list[Path]:
    """Generate an embedded cohort of ``subjects`` cases in ``out_dir`` (BraTS-style folders).

    Files per case ``<case>/<case>_<token>.nii.gz`` (float32 images, uint8 ``_seg``), all on
    ``atlas_grid(spacing)``:

    - ``brats``: ``t1``, ``t1ce``, ``t2``, ``flair``, ``seg`` (labels 1 necrosis, 2 oedema, 4 enhancing); with
      ``label_convention="brats2023"``: ``t1n``, ``t1c``, ``t2w``, ``t2f``, ``seg`` (enhancing = 3).
    - ``pretrain``: a random non-empty subset of ``t1``, ``t1c``, ``t2``, ``flair``, ``pd`` (each absent with
      probability ``missing_rate``; named by ``label_convention``), no segmentation.
    - ``adni``: ``t1`` only, plus ``out_dir/labels.csv`` with columns ``case,label,diagnosis,severity``
      (0 CN, 1 AD).

    ``preview=True`` also writes one PNG per case to ``out_dir/.previews/<case>.png``.

    Returns:
        the case folders, in index order.

    Raises:
        ValueError: unknown ``kind``/``label_convention``, ``subjects < 1``, bad ``spacing`` or ``missing_rate``.
    """
    _check_arguments(kind, spacing, missing_rate, label_convention)
    if int(subjects) != subjects or subjects < 1:
        raise ValueError(f"subjects must be a positive integer, got {subjects!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"cohort output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if preview:
        from brainmvp_components.visualize.previews import save_case_preview

    logger.info(
        "generating %d %r subjects (seed %d, %.3g mm, %s) in %s",
        subjects,
        kind,
        seed,
        spacing,
        label_convention,
        out_dir,
    )
    cases: list[Path] = []
    rows: list[dict[str, Any]] = []
    for index in range(int(subjects)):
        subject = synthesise_subject(
            kind, index, seed=seed, spacing=spacing, missing_rate=missing_rate, label_convention=label_convention
        )
        case = subject["case"]
        case_dir = out_dir / case
        case_dir.mkdir(exist_ok=True)
        for modality, image in subject["images"].items():
            _write_nifti(
                image, subject["affine"], case_dir / f"{case}_{_FILE_SUFFIX[label_convention][modality]}.nii.gz"
            )
        if kind == "brats":
            _write_nifti(subject["label"], subject["affine"], case_dir / f"{case}_seg.nii.gz")
        if kind == "adni":
            rows.append(
                {
                    "case": case,
                    "label": subject["class_label"],
                    "diagnosis": subject["diagnosis"],
                    "severity": subject["severity"],
                }
            )
        if preview:
            save_case_preview(
                subject["images"],
                out_dir / PREVIEW_DIR_NAME / f"{case}.png",
                label=subject["label"] if subject["n_tumours"] else None,
                title=f"{case} ({kind})",
            )
        cases.append(case_dir)
        detail = (
            f"{subject['diagnosis']} severity {subject['severity']:.2f}"
            if kind == "adni"
            else f"{subject['n_tumours']} tumour(s)"
        )
        logger.info("[%d/%d] %s: %s; %s", index + 1, subjects, case, ", ".join(sorted(subject["images"])), detail)
    if kind == "adni":
        _write_labels_csv(rows, out_dir / "labels.csv")
    return cases
