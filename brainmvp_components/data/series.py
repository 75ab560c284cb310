"""Image series as a hospital exports them: one NIfTI file, or the DICOM files of one series, each on its own grid.

:class:`ScanSeries` holds one series as a float32 volume ``array[i, j, k]`` with its affine (voxel index to RAS
world millimetres, the nibabel convention) and the DICOM header fields that identify it
(:mod:`brainmvp_components.data.identify`). :func:`read_study` reads a case folder as exported (several series in
one folder, or a folder per series, DICOM and NIfTI mixed), skips what is not an image volume (localisers,
structured reports) and refuses what would be read wrongly (missing slices, several echoes in one series) with a
one-line :class:`SeriesError` naming the series. :func:`write_dicom_series` writes a volume as an MR series, for
tests and for synthetic studies.

DICOM conventions: ``i`` runs along the image rows' direction (``ImageOrientationPatient[:3]``, the column index
``c`` of ``pixel_array[r, c]``), ``j`` along the columns' direction (``ImageOrientationPatient[3:]``), ``k`` along
the slice normal in order of increasing position, so ``array[:, :, k] == pixel_array_k.T``. The affine's columns
are the row cosine times ``PixelSpacing[1]``, the column cosine times ``PixelSpacing[0]``, the step between
consecutive ``ImagePositionPatient`` and the position of slice 0, computed in DICOM's LPS and converted to RAS.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from brainmvp_components.data.modalities import is_segmentation_file
from brainmvp_components.utils.writers import atomic_write

__all__ = [
    "HEADER_FIELDS",
    "ScanSeries",
    "SeriesError",
    "NotAVolumeError",
    "SkippedSeries",
    "read_nifti_series",
    "read_dicom_series",
    "read_study",
    "write_dicom_series",
]

logger = logging.getLogger(__name__)

HEADER_FIELDS: tuple[str, ...] = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "SeriesDescription",
    "ProtocolName",
    "SeriesNumber",
    "Modality",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "ContrastBolusAgent",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "SliceThickness",
    "ImageType",
    "Manufacturer",
    "PatientID",
)
"""DICOM keywords copied (from the first slice) into :attr:`ScanSeries.header`; ``None`` when absent or empty."""

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GEOMETRY_TOLERANCE = 1e-4
_MISSING_SLICE_FACTOR = 1.5
_UNEVEN_SPACING_TOLERANCE = 0.1


class SeriesError(ValueError):
    """A series (or a study) that cannot be read as one image volume; the message is one line.

    Args:
        reason: what is wrong.
        series: the series' name, prefixed to the message when given.
        case: the case folder, prefixed to the message when given.
    """

    def __init__(self, reason: str, *, series: str | None = None, case: str | os.PathLike | None = None):
        self.reason = reason
        self.series = series
        self.case = None if case is None else str(case)
        where = []
        if series is not None:
            where.append(f"series {series!r}")
        if self.case is not None:
            where.append(f"in case folder {self.case}" if where else f"case folder {self.case}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)

    def in_case(self, case: str | os.PathLike) -> SeriesError:
        """The same error, naming ``case`` too (of the same class)."""
        return type(self)(self.reason, series=self.series, case=case)


class NotAVolumeError(SeriesError):
    """A series that is no image volume to segment (a localiser, a structured report): :func:`read_study` skips
    it whatever ``strict`` says."""


@dataclass
class SkippedSeries:
    """A series :func:`read_study` left out: its name, its file (NIfTI) or folder (DICOM), and why."""

    name: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


@dataclass(repr=False)
class ScanSeries:
    """One image series on its own grid.

    Attributes:
        name: label for messages: the NIfTI file name; for DICOM ``"<SeriesDescription> (series <SeriesNumber>)"``,
            the folder's name standing in for an absent description.
        source: ``"nifti"`` or ``"dicom"``.
        path: the NIfTI file, or the folder holding the series' DICOM files.
        array: float32 volume ``(I, J, K)``; rescale slope and intercept applied for DICOM.
        affine: ``(4, 4)`` float64, voxel index ``(i, j, k, 1)`` to RAS world millimetres.
        header: :data:`HEADER_FIELDS` as plain Python values (``ImageType`` a list of str, ``None`` when absent);
            for NIfTI empty but for ``"description"``, the header's ``descrip`` when it holds text.
        dicom_files: the DICOM files in slice order (``k = 0`` first); empty for NIfTI.
    """

    name: str
    source: str
    path: Path
    array: np.ndarray
    affine: np.ndarray
    header: dict[str, Any] = field(default_factory=dict)
    dicom_files: list[Path] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"ScanSeries({self.name!r}, {self.source}, shape={self.shape}, spacing={self.spacing}, path={self.path})"

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel sizes in mm along ``i``, ``j``, ``k`` (the norms of the affine's first three columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(I, J, K)``."""
        return tuple(int(v) for v in self.array.shape)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


# NIfTI -----------------------------------------------------------------------------------------------------------


def _nifti_volume(data_shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """The 3-D shape a NIfTI array of ``data_shape`` is read as, or a :class:`SeriesError`."""
    if len(data_shape) < 2:
        raise SeriesError(f"has {len(data_shape)} dimension(s) {data_shape}; an image has at least 2", series=name)
    if len(data_shape) == 2:
        return (*data_shape, 1)
    extra = data_shape[3:]
    if int(np.prod(extra)) > 1:
        raise SeriesError(
            f"is a {len(data_shape)}-D NIfTI of shape {data_shape} with {int(np.prod(extra))} volumes; "
            "one series is one 3-D volume (split it, or keep only the volume to segment)",
            series=name,
        )
    return tuple(data_shape[:3])


def _check_finite(array: np.ndarray, name: str) -> None:
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise SeriesError(f"has {bad} non-finite voxel value(s) (NaN or infinity)", series=name)


def read_nifti_series(path: str | os.PathLike) -> ScanSeries:
    """Read one NIfTI file as a series: 3-D, a 4-D file with one volume, or a 2-D image as one slice.

    The array is the file's data scaled by its ``scl_slope``/``scl_inter`` (float32) and the affine nibabel's
    (sform, else qform). Raises :class:`SeriesError` for an unreadable file, several volumes, fewer than 2
    dimensions or non-finite values.
    """
    path = Path(path)
    name = path.name
    try:
        image = nib.load(path)
        shape = _nifti_volume(tuple(image.shape), name)
        array = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32).reshape(shape)
    except SeriesError:
        raise
    except Exception as error:  # nibabel raises many kinds for a damaged file
        raise SeriesError(f"cannot be read as NIfTI ({type(error).__name__}: {error})", series=name) from None
    _check_finite(array, name)
    header: dict[str, Any] = {}
    description = image.header.get("descrip")
    if description is not None:
        text = np.asarray(description).tobytes().split(b"\x00", 1)[0].decode("latin-1").strip()
        if text:
            header["description"] = text
    return ScanSeries(
        name=name,
        source="nifti",
        path=path,
        array=array,
        affine=np.asarray(image.affine, dtype=np.float64),
        header=header,
    )


# DICOM reading ---------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A pydicom element value as plain Python: numbers, str, lists; ``None`` for an empty value."""
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, pydicom.valuerep.IS):
        return int(value)
    if isinstance(value, float | pydicom.valuerep.DSfloat | pydicom.valuerep.DSdecimal):
        return float(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, bytes):
        return value.decode("latin-1").strip()
    return str(value).strip()


def dicom_header(ds: Dataset) -> dict[str, Any]:
    """:data:`HEADER_FIELDS` of ``ds`` as plain Python values (``ImageType`` always a list when present)."""
    header = {key: _plain(ds.get(key)) for key in HEADER_FIELDS}
    if isinstance(header["ImageType"], str):
        header["ImageType"] = [header["ImageType"]]
    return header


def _series_name(ds: Dataset, folder: Path) -> str:
    description = _plain(ds.get("SeriesDescription"))
    number = _plain(ds.get("SeriesNumber"))
    label = description if description is not None else folder.name
    return f"{label} (series {number})" if number is not None else label


def _common_folder(files: Sequence[Path]) -> Path:
    parents = {Path(f).parent for f in files}
    return parents.pop() if len(parents) == 1 else Path(os.path.commonpath([str(p) for p in parents]))


def _read_slices(files: Sequence[Path], name: str | None) -> list[tuple[Path, Dataset]]:
    slices = []
    for file in files:
        try:
            slices.append((Path(file), pydicom.dcmread(file)))
        except Exception as error:  # pydicom raises many kinds for a damaged file
            raise SeriesError(
                f"file {file} cannot be read as DICOM ({type(error).__name__}: {error})", series=name
            ) from None
    return slices


def _orientation_key(ds: Dataset) -> tuple[float, ...] | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    return tuple(round(float(v), 3) for v in iop)


def _check_image_objects(slices: list[tuple[Path, Dataset]], name: str) -> None:
    """Skip non-image objects and localisers; refuse multi-frame files and mixed orientations."""
    first = slices[0][1]
    if not any(k in first for k in _PIXEL_KEYWORDS):
        sop = first.get("SOPClassUID")
        kind = (getattr(sop, "name", None) or str(sop)) if sop is not None else "unknown SOP class"
        raise NotAVolumeError(f"is not an image ({kind}, no pixel data)", series=name)
    frames = max(int(ds.get("NumberOfFrames") or 1) for _, ds in slices)
    if str(first.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES or frames > 1:
        raise SeriesError(
            f"is enhanced multi-frame DICOM ({frames} frames in one file), which is not supported; "
            "convert the series to NIfTI with dcm2niix and give the NIfTI file",
            series=name,
        )
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        raise NotAVolumeError("is a localiser (ImageType LOCALIZER)", series=name)
    orientations: dict[tuple[float, ...] | None, int] = {}
    for _, ds in slices:
        key = _orientation_key(ds)
        orientations[key] = orientations.get(key, 0) + 1
    if None in orientations:
        raise SeriesError("has slices without a valid ImageOrientationPatient", series=name)
    if len(orientations) > 1:
        counts = sorted(orientations.values())
        if len(orientations) <= 3 and max(counts) <= 3:
            raise NotAVolumeError(
                f"is a localiser ({len(orientations)} orientations with {'/'.join(map(str, counts))} slices)",
                series=name,
            )
        if len(slices) >= 3:
            raise SeriesError(
                f"mixes {len(orientations)} slice orientations ({'/'.join(map(str, counts))} slices); "
                "one series is one stack of parallel slices",
                series=name,
            )
    if len(slices) == 1:
        raise NotAVolumeError("is a single 2-D slice (a localiser?), not a volume", series=name)
    if len(slices) < 3:
        raise NotAVolumeError(f"has only {len(slices)} slices (a localiser?), not a volume", series=name)


def _check_grid(slices: list[tuple[Path, Dataset]], name: str) -> None:
    for keyword in ("Rows", "Columns", "PixelSpacing"):
        values = {}
        for path, ds in slices:
            value = ds.get(keyword)
            if value is None:
                raise SeriesError(f"file {path.name} has no {keyword}", series=name)
            key = tuple(round(float(v), 4) for v in value) if keyword == "PixelSpacing" else int(value)
            values.setdefault(key, path.name)
        if len(values) > 1:
            found = ", ".join(f"{k} ({f})" for k, f in values.items())
            raise SeriesError(f"has inconsistent {keyword} across its slices: {found}", series=name)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _sort_by_position(slices: list[tuple[Path, Dataset]], normal: np.ndarray, name: str) -> list[np.ndarray]:
    """Sort ``slices`` in place by position along ``normal``; returns their positions (LPS mm) in that order."""
    for path, ds in slices:
        if ds.get("ImagePositionPatient") is None or len(ds.ImagePositionPatient) != 3:
            raise SeriesError(f"file {path.name} has no valid ImagePositionPatient", series=name)
    slices.sort(key=lambda s: float(np.dot(normal, np.asarray(s[1].ImagePositionPatient, dtype=np.float64))))
    positions = [np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in slices]
    along = np.array([np.dot(normal, p) for p in positions])
    steps = np.diff(along)
    duplicates = int(np.count_nonzero(np.abs(steps) < _GEOMETRY_TOLERANCE * 10))
    if duplicates:
        echoes = sorted({_plain(ds.get("EchoTime")) for _, ds in slices} - {None})
        echo_text = f" (EchoTime values {', '.join(_fmt(e) for e in echoes)} ms)" if len(echoes) > 1 else ""
        raise SeriesError(
            f"has {duplicates} duplicate slice position(s) among {len(slices)} slices: several echoes or "
            f"acquisitions in one series{echo_text}; export them as separate series",
            series=name,
        )
    step = float(np.median(steps))
    for k, gap in enumerate(steps):
        if gap > _MISSING_SLICE_FACTOR * step:
            raise SeriesError(
                f"is missing slice(s): gap of {_fmt(gap)} mm between positions {_fmt(along[k])} and "
                f"{_fmt(along[k + 1])} mm (slice step {_fmt(step)} mm)",
                series=name,
            )
    if np.max(np.abs(steps - step)) > _UNEVEN_SPACING_TOLERANCE * step:
        raise SeriesError(
            f"has uneven slice spacing ({_fmt(float(steps.min()))} to {_fmt(float(steps.max()))} mm)", series=name
        )
    return positions


def _pixels(path: Path, ds: Dataset, name: str) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as error:  # missing decoders, truncated pixel data
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
        raise SeriesError(
            f"file {path.name}: cannot decode pixel data (transfer syntax {syntax}; {type(error).__name__}: {error})",
            series=name,
        ) from None
    if pixels.ndim != 2:
        raise SeriesError(f"file {path.name} holds pixel data of shape {pixels.shape}, not one grey slice", series=name)
    slope = float(ds.get("RescaleSlope") or 1.0)
    intercept = float(ds.get("RescaleIntercept") or 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_dicom_series(files: Sequence[str | os.PathLike], name: str | None = None) -> ScanSeries:
    """Read the DICOM files of ONE series (one file per slice) as a volume.

    Args:
        files: the series' files, in any order.
        name: label for messages; by default ``"<SeriesDescription> (series <SeriesNumber>)"``.

    Returns:
        the series, its slices sorted along the slice normal (see the module's conventions).

    Raises:
        NotAVolumeError: a non-image object (no pixel data) or a localiser.
        SeriesError: several series, an enhanced multi-frame file, mixed orientations, inconsistent
            Rows/Columns/PixelSpacing, duplicate positions (several echoes), a missing slice, uneven spacing,
            undecodable pixel data or non-finite values.
    """
    files = [Path(f) for f in files]
    if not files:
        raise SeriesError("has no files", series=name)
    slices = _read_slices(files, name)
    folder = _common_folder(files)
    name = name or _series_name(slices[0][1], folder)
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(uids) > 1:
        raise SeriesError(
            f"files belong to {len(uids)} series (SeriesInstanceUID differs); read them with read_study", series=name
        )
    _check_image_objects(slices, name)
    _check_grid(slices, name)
    iop = np.asarray(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise SeriesError(f"has an ImageOrientationPatient {list(iop)} whose cosines are not orthonormal", series=name)
    positions = _sort_by_position(slices, normal, name)
    row_spacing, col_spacing = (float(v) for v in slices[0][1].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing
    lps[:3, 1] = col * row_spacing
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    lps[:3, 3] = positions[0]
    array = np.stack([_pixels(path, ds, name).T for path, ds in slices], axis=-1)
    _check_finite(array, name)
    return ScanSeries(
        name=name,
        source="dicom",
        path=folder,
        array=np.ascontiguousarray(array, dtype=np.float32),
        affine=LPS_TO_RAS @ lps,
        header=dicom_header(slices[0][1]),
        dicom_files=[path for path, _ in slices],
    )


# Studies ---------------------------------------------------------------------------------------------------------


def _visible_files(case_dir: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(case_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    return found


def _dicom_header_or_none(path: Path) -> Dataset | None:
    """The header of a DICOM file (with the DICM preamble), or ``None`` for any other file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except InvalidDicomError:
        return None
    except Exception as error:  # a damaged file with a preamble is no series either
        logger.debug("ignoring %s: not readable as DICOM (%s)", path, error)
        return None
    if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        return None
    return ds


def _unique_names(series: list[ScanSeries]) -> None:
    seen: dict[str, int] = {}
    for s in sorted(series, key=lambda s: (s.name, str(s.path))):
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name} #{seen[s.name]}"


def read_study(case_dir: str | os.PathLike, *, strict: bool = True) -> tuple[list[ScanSeries], list[SkippedSeries]]:
    """Read every series of a case folder as a hospital exports it.

    ``case_dir`` is walked recursively (dot-files and dot-folders ignored): ``*.nii``/``*.nii.gz`` files are NIfTI
    series (segmentations, told by :func:`~brainmvp_components.data.modalities.is_segmentation_file`, are
    ignored); every other file with a DICOM preamble is grouped with the others of its SeriesInstanceUID, so one
    folder holding several series and a folder per series both work; files that are not DICOM are ignored.
    Series of one name are told apart by ``" #2"``, ``" #3"``...

    Args:
        case_dir: the case folder.
        strict: raise on a series that cannot be read correctly; when ``False`` it is skipped with the reason.

    Returns:
        the usable series sorted by name, and the skipped ones (non-image objects, localisers and, when not
        ``strict``, the unreadable ones).

    Raises:
        FileNotFoundError: ``case_dir`` is not a folder.
        SeriesError: (``strict``) a series that cannot be read correctly, or no usable series at all.
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise FileNotFoundError(f"case folder {case_dir} does not exist or is not a folder")
    series: list[ScanSeries] = []
    skipped: list[SkippedSeries] = []

    def attempt(name: str, path: Path, read) -> None:
        try:
            found = read()
        except NotAVolumeError as error:
            skipped.append(SkippedSeries(name, path, error.reason))
            return
        except SeriesError as error:
            if strict:
                raise error.in_case(case_dir) from None
            skipped.append(SkippedSeries(name, path, error.reason))
            return
        if found.source == "nifti" and min(found.shape) < 3:
            skipped.append(SkippedSeries(name, path, f"has shape {found.shape}, not a volume (a localiser?)"))
            return
        series.append(found)

    groups: dict[str, list[Path]] = {}
    headers: dict[str, Dataset] = {}
    for path in _visible_files(case_dir):
        if _is_nifti(path):
            if not is_segmentation_file(path):
                attempt(path.name, path, lambda p=path: read_nifti_series(p))
            continue
        ds = _dicom_header_or_none(path)
        if ds is None:
            continue
        uid = str(ds.get("SeriesInstanceUID") or "")
        if not uid:
            skipped.append(SkippedSeries(path.name, path, "DICOM file without SeriesInstanceUID"))
            continue
        groups.setdefault(uid, []).append(path)
        headers.setdefault(uid, ds)
    for uid, files in groups.items():
        name = _series_name(headers[uid], _common_folder(files))
        attempt(name, _common_folder(files), lambda f=files, n=name: read_dicom_series(f, n))
    _unique_names(series)
    series.sort(key=lambda s: s.name)
    skipped.sort(key=lambda s: s.name)
    if not series:
        listed = "; ".join(str(s) for s in skipped) if skipped else "no NIfTI or DICOM image files found"
        raise SeriesError(f"no usable series (skipped: {listed})", case=case_dir)
    return series, skipped


# DICOM writing ---------------------------------------------------------------------------------------------------


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _int16_scaling(array: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` such that ``round((array - intercept) / slope)`` fits int16 and keeps the range."""
    lo, hi = float(array.min()), float(array.max())
    if np.array_equal(array, np.round(array)) and lo >= -32768 and hi <= 32767:
        return 1.0, 0.0
    intercept = float(_ds((lo + hi) / 2))
    slope = float(_ds(max(hi - intercept, intercept - lo, 1e-12) / 32000.0))
    return slope, intercept


def _study_uids(
    series_description: str, series_number: int, patient_id: str, study_uid, frame_of_reference_uid, series_uid
) -> tuple[str, str, str]:
    study_uid = study_uid or generate_uid(entropy_srcs=["brainmvp", "study", patient_id])
    frame_of_reference_uid = frame_of_reference_uid or generate_uid(entropy_srcs=["brainmvp", "frame", study_uid])
    series_uid = series_uid or generate_uid(
        entropy_srcs=["brainmvp", "series", study_uid, series_description, str(series_number)]
    )
    return str(study_uid), str(frame_of_reference_uid), str(series_uid)


def _slice_geometry(affine: np.ndarray) -> tuple[list[str], list[str], np.ndarray, np.ndarray, float]:
    """IOP, PixelSpacing (as DS strings), the slice step and origin (LPS mm) and the slice spacing of ``affine``."""
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    col_spacing, row_spacing = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    step = lps[:3, 2]
    if min(col_spacing, row_spacing, np.linalg.norm(step)) < 1e-6:
        raise ValueError(f"affine {affine.tolist()} has a zero-length voxel axis")
    row, col = lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing
    if abs(np.dot(row, col)) > 1e-6:
        raise ValueError("affine's first two axes are not perpendicular; DICOM slices need a rectangular pixel grid")
    iop = [_ds(v) for v in (*row, *col)]
    spacing = [_ds(row_spacing), _ds(col_spacing)]
    return iop, spacing, step, lps[:3, 3], float(abs(np.dot(step, np.cross(row, col))))


def _base_dataset(
    *, study_uid: str, series_uid: str, frame_uid: str, patient_id: str, series_description: str, series_number: int
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.Manufacturer = "BrainMVP"
    ds.ManufacturerModelName = "synthetic"
    ds.MagneticFieldStrength = "3"
    ds.PatientName = f"{patient_id}^"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.StudyID = "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.SeriesNumber = int(series_number)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.EchoTime = None
    ds.RepetitionTime = None
    ds.EchoTrainLength = None
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_dicom_series(
    array: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    series_description: str,
    series_number: int = 1,
    study_uid: str | None = None,
    patient_id: str = "ANON",
    extra_tags: Mapping[str, Any] | None = None,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """Write a volume as an MR Image Storage series, one file per slice ``k`` (``IM_0001.dcm``...).

    Pixels are int16 with ``RescaleSlope``/``RescaleIntercept`` chosen to keep the data's range (integer data in
    the int16 range is stored as is). The geometry follows the module's conventions, so :func:`read_dicom_series`
    gives back ``array`` and ``affine`` (an affine of negative determinant comes back as the same voxels with
    ``k`` reversed). UIDs not given are derived from ``patient_id``, the description and the number, so the same
    call writes the same files; series written with one ``study_uid`` share a frame of reference by default.

    Args:
        array: ``(I, J, K)`` volume (a 2-D array is one slice); finite values.
        affine: ``(4, 4)`` voxel index to RAS mm; its first two axes must be perpendicular.
        out_dir: folder to write (created).
        series_description, series_number, study_uid, patient_id, frame_of_reference_uid, series_uid: header fields.
        extra_tags: further attributes by DICOM keyword (``EchoTime``, ``RepetitionTime``, ``InversionTime``,
            ``ContrastBolusAgent``...), set on every slice last, so they may override the defaults.

    Returns:
        the written files, in slice order.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"write_dicom_series: array of shape {array.shape} is not 3-D")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"write_dicom_series: array for {series_description!r} has non-finite values")
    for keyword in extra_tags or {}:
        if pydicom.datadict.tag_for_keyword(keyword) is None:
            raise ValueError(f"write_dicom_series: {keyword!r} is not a DICOM keyword")
    iop, pixel_spacing, step, origin, slice_spacing = _slice_geometry(affine)
    normal = np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))
    study_uid, frame_uid, series_uid = _study_uids(
        series_description, series_number, patient_id, study_uid, frame_of_reference_uid, series_uid
    )
    slope, intercept = _int16_scaling(array)
    stored = np.clip(np.round((array.astype(np.float64) - intercept) / slope), -32768, 32767).astype(np.int16)
    base = _base_dataset(
        study_uid=study_uid,
        series_uid=series_uid,
        frame_uid=frame_uid,
        patient_id=patient_id,
        series_description=series_description,
        series_number=series_number,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(array.shape[2]):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["brainmvp", "instance", series_uid, str(k)])
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in origin + k * step]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = _ds(slice_spacing)
        ds.SpacingBetweenSlices = _ds(slice_spacing)
        ds.SliceLocation = _ds(float(np.dot(origin + k * step, normal)))
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[0])
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        for keyword, value in (extra_tags or {}).items():
            setattr(ds, keyword, value)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"IM_{k + 1:04d}.dcm"
        written.append(atomic_write(path, lambda tmp, d=ds: d.save_as(tmp, enforce_file_format=True), suffix=".dcm"))
    return written
