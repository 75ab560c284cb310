"""DICOM Segmentation (SEG) objects of a tumour label map on the source series, so PACS viewers overlay it.

:func:`write_dicom_seg` turns a BraTS label map on the reference series' own grid into a DICOM SEG that
references that series (same Frame of Reference, one frame per source slice that has tumour), with one segment
per non-empty label: category "Morphologically abnormal structure" (SCT 49755003), types Necrosis (SCT 6574001),
Edema (SCT 79654002) and, for enhancing tumour, Neoplasm (SCT 108369006). The segmentation type is ``BINARY`` by
default, which viewers support widely; ``LABELMAP`` (highdicom >= 0.24) is available. Each segment's tracking id
is ``"label <value>"``, so :func:`read_dicom_seg` rebuilds the label values.

Array convention (as ``brainmvp_components.data.series`` reads DICOM): ``labels[:, :, k]`` belongs to
``source_files[k]`` and equals that slice's ``pixel_array.T`` layout, i.e. ``labels[i, j, k]`` is row ``j``,
column ``i`` of slice ``k``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from brainmvp_components.utils.writers import atomic_write

__all__ = [
    "DEFAULT_LABEL_NAMES",
    "write_dicom_seg",
    "read_dicom_seg",
    "segment_property_type",
    "segment_table",
    "segment_frames",
]

DEFAULT_LABEL_NAMES: dict[int, str] = {1: "necrotic tumour core", 2: "peritumoural oedema", 4: "enhancing tumour"}
"""BraTS 2021 labels (enhancing 4; use 3 for BraTS 2023) and their segment labels."""

_TYPE_BY_KEYWORD = (("necro", "Necrosis"), ("oedema", "Edema"), ("edema", "Edema"))


def _algorithm_version() -> str:
    try:
        from importlib.metadata import version

        return version("brainmvp")
    except Exception:  # an uninstalled checkout: no package metadata
        return "unknown"


def segment_property_type(label_name: str):
    """The SNOMED CT segmented property type of a segment label: Necrosis, Edema, else Neoplasm."""
    from pydicom.sr.codedict import codes

    lowered = label_name.lower()
    for keyword, name in _TYPE_BY_KEYWORD:
        if keyword in lowered:
            return getattr(codes.SCT, name)
    return codes.SCT.Neoplasm


def segment_table(label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES) -> list[dict]:
    """One entry per label, segment numbers 1, 2, ... in the order of ``label_names``: ``value``, ``label``,
    ``category`` and ``type`` (SNOMED CT codes) and ``tracking_id`` (``"label <value>"``, from which
    :func:`read_dicom_seg` rebuilds the label values). For SEG writers whose segments are fixed before the labels
    exist (MONAI Deploy's ``DICOMSegmentationWriterOperator``); pair it with :func:`segment_frames`."""
    from pydicom.sr.codedict import codes

    return [
        {
            "value": int(value),
            "label": name,
            "category": codes.SCT.MorphologicallyAbnormalStructure,
            "type": segment_property_type(name),
            "tracking_id": f"label {int(value)}",
        }
        for value, name in label_names.items()
    ]


def segment_frames(labels: np.ndarray, label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES) -> np.ndarray:
    """The SEG frames ``(slices, rows, columns)`` (uint8) of a label map ``(columns, rows, slices)`` on the source
    grid (the module's convention): each label value replaced by its segment number in :func:`segment_table`.

    Raises:
        ValueError: label values without a name in ``label_names``.
    """
    labels = np.asarray(labels)
    numbers = {int(value): number for number, value in enumerate(label_names, start=1)}
    unnamed = [int(v) for v in np.unique(labels) if v != 0 and int(v) not in numbers]
    if unnamed:
        raise ValueError(f"label values {unnamed} have no name in label_names {dict(label_names)}")
    frames = np.zeros(labels.shape, dtype=np.uint8)
    for value, number in numbers.items():
        frames[labels == value] = number
    return np.ascontiguousarray(frames.transpose(2, 1, 0))


def _read_sources(source_files: Sequence[str | os.PathLike]) -> list:
    import pydicom

    if not source_files:
        raise ValueError("write_dicom_seg needs the source series' DICOM files; none were given")
    return [pydicom.dcmread(str(f)) for f in source_files]


def write_dicom_seg(
    labels: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES,
    algorithm_name: str = "brainmvp",
    algorithm_version: str | None = None,
    segmentation_type: str = "BINARY",
    series_number: int = 900,
    series_description: str = "BrainMVP tumour segmentation",
) -> Path:
    """Write a DICOM SEG of ``labels`` referencing the source series; returns ``out_path``.

    Args:
        labels: integer label map ``(columns, rows, n_slices)`` on the source grid (``labels[:, :, k]`` is slice
            ``source_files[k]``, transposed as the module docstring says).
        source_files: the source series' DICOM files, one per slice, in the order of ``labels``' last axis.
        out_path: the SEG file to write (atomically).
        label_names: label value -> segment label; values present in ``labels`` but not here are an error, empty
            labels are skipped.
        algorithm_name, algorithm_version: the algorithm identification of every segment (the version defaults to
            the installed package's).
        segmentation_type: ``"BINARY"`` or ``"LABELMAP"``.
        series_number, series_description: of the SEG series.

    Raises:
        ValueError: a shape not matching the source series, labels without a name, or no tumour at all.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = _read_sources(source_files)
    labels = np.asarray(labels)
    expected = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    if labels.shape != expected:
        raise ValueError(f"labels have shape {labels.shape}, the source series is {expected} (columns, rows, slices)")
    present = [int(v) for v in np.unique(labels) if v != 0]
    unnamed = [v for v in present if v not in label_names]
    if unnamed:
        raise ValueError(f"label values {unnamed} have no name in label_names {dict(label_names)}")
    if not present:
        raise ValueError("the label map is empty: a DICOM SEG needs at least one non-empty segment")

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version or _algorithm_version(),
    )
    descriptions = []
    segment_map = np.zeros(labels.shape, dtype=np.uint8)
    for number, value in enumerate(present, start=1):
        segment_map[labels == value] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label_names[value],
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=segment_property_type(label_names[value]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=f"label {value}",
            )
        )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(segment_map.transpose(2, 1, 0)),  # (slices, rows, columns)
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="brainmvp",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version or _algorithm_version(),
        device_serial_number="0",
        series_description=series_description,
    )
    return atomic_write(out_path, lambda tmp: seg.save_as(tmp), suffix=".dcm")


def _label_value(description, number: int) -> int:
    tracking = str(getattr(description, "TrackingID", "") or "")
    if tracking.startswith("label ") and tracking[6:].strip().isdigit():
        return int(tracking[6:])
    return number


def read_dicom_seg(seg_path: str | os.PathLike, source_files: Sequence[str | os.PathLike]) -> np.ndarray:
    """The label map ``(columns, rows, n_slices)`` (uint8) of a SEG written by :func:`write_dicom_seg`, on the
    grid of the source series it references (slices with no frame are zero).

    Label values come from each segment's ``"label <value>"`` tracking id (the segment number otherwise).
    """
    import highdicom as hd

    sources = _read_sources(source_files)
    seg = hd.seg.segread(str(seg_path))
    uids = [str(s.SOPInstanceUID) for s in sources]
    numbers = [int(n) for n in seg.segment_numbers]  # a LABELMAP's background segment 0 is not among them
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, combine_segments=True, skip_overlap_checks=True
    )
    lookup = np.zeros(max(numbers) + 1, dtype=np.uint8)
    for description in seg.SegmentSequence:
        if int(description.SegmentNumber) in numbers:
            lookup[int(description.SegmentNumber)] = _label_value(description, int(description.SegmentNumber))
    return lookup[np.asarray(pixels, dtype=np.int64)].transpose(2, 1, 0)
