"""Hospital-like studies made from embedded cohort cases, with a known answer.

An embedded case is what BraTS preprocessing produces: four co-registered, skull-stripped volumes on the atlas
grid. :func:`export_study` undoes that preprocessing the way a scanner and a PACS export would never have done
it in the first place:

- skull and scalp are put back, from the Colin27 whole head (packaged in
  :mod:`brainmvp_components.data.resources`), registered to the case's brain by its mask, with intensities
  scaled per modality and a noisy background;
- every series gets its own pose (the patient moved between series: rotations and shifts drawn from
  :class:`SeriesProtocol`) and its own grid (orientation, in-plane voxel size, slice thickness; a 5 mm series is
  made by averaging 5 mm slabs, as a thick-slice acquisition integrates its slice profile);
- series are written as DICOM series with scanner-like headers (one folder per series, or all files in one
  folder) or as loose NIfTI files, named the way a site names them, optionally with two names swapped.

The truth comes along: the case's label resampled onto the reference series' own grid, and every pose.
Tests and benchmarks of the hospital-study path use these studies; nothing here is used at inference time.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

__all__ = [
    "SeriesProtocol",
    "ExportedStudy",
    "TEST_PROTOCOL",
    "CLINICAL_PROTOCOL",
    "colin27_head",
    "add_head",
    "export_study",
    "oracle_preprocessing",
]

_PAD_MM = 30.0


@dataclass(frozen=True)
class SeriesProtocol:
    """How one modality leaves the scanner.

    Attributes:
        modality: canonical modality of the images.
        description: SeriesDescription (DICOM) or file-name stem (NIfTI) a site would use.
        orientation: slice orientation, ``"axial"``, ``"sagittal"`` or ``"coronal"``.
        voxel_mm: in-plane voxel size (rows = columns) and slice thickness, mm.
        max_rotation_deg, max_shift_mm: bounds of the uniform draw of the patient's pose for this series
            (per axis), relative to the atlas frame of the embedded case.
        tags: DICOM header fields (sequence parameters, contrast agent).
        file_label: the modality word of a NIfTI export's file name (``<patient>_<file_label>.nii.gz``).
    """

    modality: str
    description: str
    orientation: str = "axial"
    voxel_mm: tuple[float, float] = (1.0, 1.0)
    max_rotation_deg: float = 0.0
    max_shift_mm: float = 0.0
    tags: Mapping[str, object] = field(default_factory=dict)
    file_label: str = ""


_T1C_TAGS = {"EchoTime": 2.5, "RepetitionTime": 1900.0, "InversionTime": 900.0, "ContrastBolusAgent": "GADOBUTROL"}
_T1_TAGS = {"EchoTime": 2.4, "RepetitionTime": 1800.0, "InversionTime": 900.0}
_T2_TAGS = {"EchoTime": 100.0, "RepetitionTime": 5000.0}
_FLAIR_TAGS = {"EchoTime": 90.0, "RepetitionTime": 9000.0, "InversionTime": 2500.0}

TEST_PROTOCOL: tuple[SeriesProtocol, ...] = (
    SeriesProtocol("t1c", "AX T1 MPRAGE POST GD", "axial", (2.0, 2.0), 5.0, 5.0, _T1C_TAGS, "T1c"),
    SeriesProtocol("t1", "SAG T1 MPRAGE", "sagittal", (2.0, 2.0), 4.0, 8.0, _T1_TAGS, "T1w"),
    SeriesProtocol("t2", "AX T2 FSE", "axial", (2.0, 5.0), 10.0, 15.0, _T2_TAGS, "T2w"),
    SeriesProtocol("flair", "AX T2 FLAIR", "axial", (2.0, 5.0), 10.0, 15.0, _FLAIR_TAGS, "FLAIR"),
)
"""Small studies for the test suite: 2 mm in-plane, t2 and FLAIR as 5 mm slices, moved up to 10 degrees and
15 mm."""

CLINICAL_PROTOCOL: tuple[SeriesProtocol, ...] = (
    SeriesProtocol("t1c", "AX T1 MPRAGE POST GD", "axial", (1.0, 1.0), 5.0, 5.0, _T1C_TAGS, "T1c"),
    SeriesProtocol("t1", "SAG T1 MPRAGE", "sagittal", (1.0, 1.0), 4.0, 8.0, _T1_TAGS, "T1w"),
    SeriesProtocol("t2", "AX T2 FSE", "axial", (1.0, 5.0), 10.0, 15.0, _T2_TAGS, "T2w"),
    SeriesProtocol("flair", "AX T2 FLAIR", "axial", (1.0, 5.0), 10.0, 15.0, _FLAIR_TAGS, "FLAIR"),
)
"""A routine tumour protocol as a 1.5 T site runs it: 1 mm in-plane, t2 and FLAIR as 5 mm slices."""

_HEAD_SIGNAL = {"t1": 1.0, "t1c": 1.15, "t2": 0.8, "flair": 0.9, "pd": 0.9}
"""Scalp and marrow signal relative to white matter; fat is bright in each of these sequences."""

_ORIENTATIONS = {
    # voxel axes (i, j, k) as RAS directions: DICOM rows run to the patient's left, columns posterior (axial)
    "axial": np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T,
    "sagittal": np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]).T,
    "coronal": np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]).T,
}


@dataclass
class ExportedStudy:
    """A written study and its truth.

    Attributes:
        case_dir: the folder handed to the hospital-study path.
        case: the embedded case it was made from.
        series_paths: modality -> the NIfTI file or DICOM folder of its series (the true modality, whatever the
            name says).
        reference_modality: the modality of the first protocol entry (its grid carries the truth).
        truth: the case's label on the reference series' grid, ``(I, J, K)`` uint8.
        truth_affine: that grid's affine.
        poses: modality -> ``(4, 4)`` RAS matrix from the atlas world of the embedded case to the series' world.
        swapped: the two modalities whose names were exchanged, if any.
        images: modality -> ``(array, affine)`` of each series as written (before DICOM's integer scaling).
    """

    case_dir: Path
    case: str
    series_paths: dict[str, Path]
    reference_modality: str
    truth: np.ndarray
    truth_affine: np.ndarray
    poses: dict[str, np.ndarray]
    swapped: tuple[str, str] | None = None
    images: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def colin27_head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packaged Colin27 whole head: ``(head float32, brain mask bool, affine)`` at 2 mm, MNI frame."""
    root = resources.files("brainmvp_components.data.resources")
    with resources.as_file(root / "colin27_head_2mm.nii.gz") as head_path:
        head = nib.load(head_path)
        head_array, affine = head.get_fdata(dtype=np.float32), head.affine.copy()
    with resources.as_file(root / "colin27_brain_mask_2mm.nii.gz") as mask_path:
        mask = np.asarray(nib.load(mask_path).dataobj) > 0
    return head_array, mask, affine


def _padded_grid(affine: np.ndarray, shape: Sequence[int], pad_mm: float) -> tuple[np.ndarray, tuple[int, ...]]:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    pad = np.ceil(pad_mm / spacing).astype(int)
    padded = affine.copy()
    padded[:3, 3] = affine[:3, :3] @ (-pad) + affine[:3, 3]
    return padded, tuple(int(n + 2 * p) for n, p in zip(shape, pad))


def _sample(volume: np.ndarray, affine: np.ndarray, world_to_source: np.ndarray, target_affine, target_shape, order):
    """``volume`` (on ``affine``) sampled on a target grid whose world maps into the volume's world by
    ``world_to_source``."""
    vox = np.linalg.inv(affine) @ world_to_source @ target_affine
    return ndi.affine_transform(
        volume, vox[:3, :3], vox[:3, 3], output_shape=tuple(target_shape), order=order, mode="constant", cval=0.0
    )


def add_head(
    images: Mapping[str, np.ndarray], brain_mask: np.ndarray, affine: np.ndarray, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[int, ...]]:
    """Skull and scalp around a skull-stripped case, on its grid padded by 30 mm.

    The Colin27 brain is aligned to the case's brain by their masks' centres and extents along each world axis
    (:func:`_mask_alignment`) and the head around it follows; outside the case's brain each modality shows
    Colin27's non-brain tissue scaled to that modality's white-matter signal, plus a noisy background
    (Rician-like, 2 % of white matter).

    Args:
        images: modality -> ``(H, W, D)`` skull-stripped volume (background exactly zero).
        brain_mask: the case's brain mask ``(H, W, D)``.
        affine: the case's affine.
        seed: seed of the noise.

    Returns:
        (modality -> whole-head volume, its affine, its shape).
    """
    head, colin_mask, colin_affine = colin27_head()
    padded_affine, padded_shape = _padded_grid(affine, brain_mask.shape, _PAD_MM)
    to_case = np.linalg.inv(affine) @ padded_affine
    inside = ndi.affine_transform(
        brain_mask.astype(np.float32), to_case[:3, :3], to_case[:3, 3], output_shape=padded_shape, order=0
    )
    to_colin = _mask_alignment(inside > 0, padded_affine, colin_mask, colin_affine)
    colin = _sample(head, colin_affine, to_colin, padded_affine, padded_shape, order=1)
    colin_brain = _sample(colin_mask.astype(np.float32), colin_affine, to_colin, padded_affine, padded_shape, order=1)
    in_case_grid = ndi.affine_transform(
        np.ones(brain_mask.shape, dtype=np.float32), to_case[:3, :3], to_case[:3, 3], output_shape=padded_shape, order=0
    )
    white_matter_colin = float(np.percentile(head[colin_mask], 90))
    # beyond the case's field of view (the brainstem below an atlas-frame case, say) Colin27's brain shows too
    non_brain = colin * ((colin_brain < 0.5) | (in_case_grid == 0)) / white_matter_colin
    rng = np.random.default_rng(seed)
    out = {}
    for modality, image in images.items():
        case_image = ndi.affine_transform(image, to_case[:3, :3], to_case[:3, 3], output_shape=padded_shape, order=1)
        white_matter = float(np.percentile(image[brain_mask], 90))
        whole = np.where(inside > 0, case_image, non_brain * white_matter * _HEAD_SIGNAL.get(modality, 1.0))
        sigma = 0.02 * white_matter
        noisy = np.hypot(whole + rng.normal(0.0, sigma, whole.shape), rng.normal(0.0, sigma, whole.shape))
        out[modality] = noisy.astype(np.float32)
    return out, padded_affine, padded_shape


def _brain_corners(mask: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
    """World positions ``(3, 8)`` of the corners of the brain's bounding box grown by ``margin_mm`` (the head)."""
    index = np.argwhere(mask)
    low, high = index.min(axis=0), index.max(axis=0)
    corners = np.array(
        [[a, b, c, 1.0] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])]
    )
    world = (affine @ corners.T)[:3]
    centre = world.mean(axis=1, keepdims=True)
    direction = np.sign(world - centre)
    return world + margin_mm * direction


def _mask_alignment(mask: np.ndarray, affine: np.ndarray, other: np.ndarray, other_affine: np.ndarray) -> np.ndarray:
    """World of ``mask`` -> world of ``other``: centres of mass matched, and the spread (standard deviation) along
    each world axis. Both brains are near the same orientation (the cohort rotates by at most 4 degrees)."""

    def moments(m: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = (a[:3, :3] @ np.argwhere(m).T.astype(np.float64)) + a[:3, 3:4]
        return points.mean(axis=1), points.std(axis=1)

    centre, spread = moments(mask, affine)
    other_centre, other_spread = moments(other, other_affine)
    scale = other_spread / spread
    transform = np.eye(4)
    transform[:3, :3] = np.diag(scale)
    transform[:3, 3] = other_centre - scale * centre
    return transform


def _pose(rng: np.random.Generator, protocol: SeriesProtocol, centre: np.ndarray) -> np.ndarray:
    """Atlas world -> series world: a rotation about the head centre and a shift, each bounded per axis."""
    angles = rng.uniform(-protocol.max_rotation_deg, protocol.max_rotation_deg, size=3)
    shift = rng.uniform(-protocol.max_shift_mm, protocol.max_shift_mm, size=3)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    pose[:3, 3] = centre - pose[:3, :3] @ centre + shift
    return pose


def _series_grid(protocol: SeriesProtocol, head_world_corners: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """A grid in the scanner's frame covering the (moved) head: axes of the slice orientation, the protocol's
    voxel size, its origin at the first voxel centre."""
    axes = _ORIENTATIONS[protocol.orientation]
    in_plane, thickness = protocol.voxel_mm
    spacing = np.array([in_plane, in_plane, thickness])
    along = axes.T @ head_world_corners  # coordinates of the corners along each voxel axis
    low, high = along.min(axis=1), along.max(axis=1)
    shape = tuple(int(np.ceil((h - lo) / s)) + 1 for lo, h, s in zip(low, high, spacing))
    affine = np.eye(4)
    affine[:3, :3] = axes * spacing
    affine[:3, 3] = axes @ low
    return affine, shape


def _acquire(volume, affine, pose, protocol: SeriesProtocol, grid_affine, grid_shape) -> np.ndarray:
    """The series: the head moved by ``pose`` and sampled on the grid; a slice thicker than the in-plane voxel
    averages its slab (sampled at 1 mm steps through the slice)."""
    in_plane, thickness = protocol.voxel_mm
    inverse_pose = np.linalg.inv(pose)
    if thickness <= in_plane:
        return _sample(volume, affine, inverse_pose, grid_affine, grid_shape, order=1)
    steps = max(int(round(thickness)), 2)
    offsets = (np.arange(steps) + 0.5) / steps - 0.5  # in units of the slice thickness
    slab = np.zeros(grid_shape, dtype=np.float32)
    for offset in offsets:
        shifted = grid_affine.copy()
        shifted[:3, 3] = grid_affine[:3, 3] + grid_affine[:3, 2] * offset
        slab += _sample(volume, affine, inverse_pose, shifted, grid_shape, order=1)
    return slab / steps


def export_study(
    subject: Mapping,
    out_dir: str | Path,
    *,
    protocol: Sequence[SeriesProtocol] = TEST_PROTOCOL,
    as_dicom: bool = True,
    one_folder: bool = False,
    swap: tuple[str, str] | None = None,
    seed: int = 0,
    patient_id: str | None = None,
) -> ExportedStudy:
    """Write one embedded case as a hospital would export it.

    Args:
        subject: an embedded case in memory, as :func:`~brainmvp_components.data.cohort.synthesise_subject`
            returns it (``images``, ``label``, ``brain_mask``, ``affine``, ``case``).
        out_dir: the study folder to create.
        protocol: one entry per exported series; the first is the reference (its grid carries the truth).
            Modalities the subject lacks are not written.
        as_dicom: DICOM series (one folder per series, ``NN_<description>``) or NIfTI files
            (``<patient>_<description>.nii.gz``).
        one_folder: DICOM only: every file of every series in one folder (series told apart by their UIDs).
        swap: two modalities whose names (SeriesDescription or file name) are exchanged, as a mislabelled export.
        seed: seed of the poses and the noise.
        patient_id: written in the headers and file names (default: the case id).

    Returns:
        the written study and its truth.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=False)
    rng = np.random.default_rng(seed)
    case = str(subject["case"])
    patient = patient_id or case
    entries = [p for p in protocol if p.modality in subject["images"]]
    if not entries:
        raise ValueError(f"{case}: none of the protocol's modalities {[p.modality for p in protocol]} are present")
    if swap is not None:
        by_modality = {p.modality: p for p in entries}
        a, b = swap
        if a not in by_modality or b not in by_modality:
            raise ValueError(f"cannot swap {swap}: the study has {sorted(by_modality)}")
        exchange = {a: by_modality[b], b: by_modality[a]}
        entries = [
            replace(p, description=exchange[p.modality].description, file_label=exchange[p.modality].file_label)
            if p.modality in exchange
            else p
            for p in entries
        ]
    heads, head_affine, head_shape = add_head(subject["images"], subject["brain_mask"], subject["affine"], seed)
    head_mask = np.asarray(subject["brain_mask"])
    centre = (subject["affine"] @ np.append(np.argwhere(head_mask).mean(axis=0), 1.0))[:3]
    world_corners = _brain_corners(head_mask, subject["affine"], margin_mm=_PAD_MM - 5.0)

    series_paths: dict[str, Path] = {}
    poses: dict[str, np.ndarray] = {}
    images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    study_uid = None
    truth = truth_affine = None
    for number, entry in enumerate(entries, start=1):
        pose = _pose(rng, entry, centre)
        grid_affine, grid_shape = _series_grid(entry, (pose @ np.vstack([world_corners, np.ones(8)]))[:3])
        image = _acquire(heads[entry.modality], head_affine, pose, entry, grid_affine, grid_shape)
        poses[entry.modality] = pose
        images[entry.modality] = (image, grid_affine)
        if number == 1:
            truth = _sample(
                np.asarray(subject["label"]), subject["affine"], np.linalg.inv(pose), grid_affine, grid_shape, order=0
            ).astype(np.uint8)
            truth_affine = grid_affine
        stem = entry.description.replace(" ", "_")
        if as_dicom:
            from brainmvp_components.data.series import write_dicom_series

            folder = out_dir / f"{number:02d}_{stem}"
            files = write_dicom_series(
                image, grid_affine, folder, series_description=entry.description, series_number=number,
                study_uid=study_uid, patient_id=patient, extra_tags=dict(entry.tags),
            )  # fmt: skip
            if study_uid is None:
                import pydicom

                study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            if one_folder:  # a PACS export: every file side by side, series told apart by their UIDs only
                for file in files:
                    file.rename(out_dir / f"S{number:02d}_{file.name}")
                folder.rmdir()
                folder = out_dir
            series_paths[entry.modality] = folder
        else:
            path = out_dir / f"{patient}_{entry.file_label or stem}.nii.gz"
            nib.save(nib.Nifti1Image(image.astype(np.float32), grid_affine), path)
            series_paths[entry.modality] = path
    return ExportedStudy(
        case_dir=out_dir,
        case=case,
        series_paths=series_paths,
        reference_modality=entries[0].modality,
        truth=truth,
        truth_affine=truth_affine,
        poses=poses,
        swapped=tuple(swap) if swap else None,
        images=images,
    )


def oracle_preprocessing(study: ExportedStudy, subject: Mapping) -> dict[str, np.ndarray]:
    """The study's series preprocessed with the truth: each resampled onto the embedded case's grid through its
    known pose (perfect co-registration and atlas alignment) and masked by the case's brain mask (perfect brain
    extraction). What a BraTS-style preprocessing of the exported series could at best give the network: the
    information thick slices lost stays lost, so the hospital path is judged against this, beside the embedded
    case itself.

    Returns:
        modality -> ``(H, W, D)`` float32 volume on the case's grid.
    """
    mask = np.asarray(subject["brain_mask"], dtype=bool)
    out = {}
    for modality, (image, affine) in study.images.items():
        volume = _sample(image, affine, study.poses[modality], subject["affine"], mask.shape, order=1)
        out[modality] = np.where(mask, np.maximum(volume, 0.0), 0.0).astype(np.float32)
    return out
