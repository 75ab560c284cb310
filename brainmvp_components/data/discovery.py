"""Case discovery for BraTS-style data sets: case folders, and the image and segmentation files in each.

A data set is a folder with one sub-folder per case; each case folder holds one NIfTI file per modality
(recognised by file name through :mod:`brainmvp_components.data.modalities`) and optionally one segmentation.
:func:`case_id_from_path` names a case after one of its files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from brainmvp_components.data.modalities import (
    CANONICAL_MODALITIES,
    is_segmentation_file,
    modality_from_filename,
    strip_nifti_suffix,
)
from brainmvp_components.data.problems import DatasetProblem

__all__ = [
    "CaseFiles",
    "discover_cases",
    "case_id_from_path",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass
class CaseFiles:
    """Files of one case as discovered: images by canonical modality, the segmentation (if any), problems found."""

    case: str
    directory: Path
    images: dict[str, Path] = field(default_factory=dict)
    label: Path | None = None
    problems: list[DatasetProblem] = field(default_factory=list)
    label_values: frozenset[int] | None = None
    """Values found in the segmentation, set by :func:`verify_case` once it has read it."""

    @property
    def modalities(self) -> list[str]:
        """Canonical modalities of the case, in :data:`CANONICAL_MODALITIES` order."""
        return [m for m in CANONICAL_MODALITIES if m in self.images]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _case_directories(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.iterdir() if p.is_dir() and not _is_hidden(p))


def discover_cases(data_dir: str | os.PathLike) -> list[CaseFiles]:
    """Find the cases of a BraTS-style data set: every non-hidden sub-folder of ``data_dir`` is a case.

    Image files are recognised by name (``modality_from_filename``), segmentations by
    ``is_segmentation_file``. Files recognised as neither are logged as warnings and ignored. Two files for
    one modality, two segmentations, or a folder without any image are recorded in the case's ``problems``.

    Raises:
        FileNotFoundError: ``data_dir`` is not a folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data set folder {data_dir} does not exist or is not a folder")
    cases = []
    for directory in _case_directories(data_dir):
        case = CaseFiles(case=directory.name, directory=directory)
        for path in sorted(p for p in directory.iterdir() if not _is_hidden(p)):
            if not path.is_file() or not _is_nifti(path):
                logger.warning("case %r: ignoring %s (not a NIfTI file)", case.case, path.name)
                continue
            if is_segmentation_file(path):
                if case.label is not None:
                    case.problems.append(
                        DatasetProblem(case.case, str(path), f"second segmentation file (first: {case.label.name})")
                    )
                else:
                    case.label = path
                continue
            modality = modality_from_filename(path)
            if modality is None:
                logger.warning("case %r: ignoring %s (no known modality in its name)", case.case, path.name)
            elif modality in case.images:
                case.problems.append(
                    DatasetProblem(
                        case.case,
                        str(path),
                        f"second file for modality {modality!r} (first: {case.images[modality].name})",
                    )
                )
            else:
                case.images[modality] = path
        if not case.images:
            case.problems.append(DatasetProblem(case.case, str(directory), "case folder holds no image file"))
        cases.append(case)
    return cases


def case_id_from_path(path) -> str:
    """Case identifier from a file name: drops the suffix and a trailing modality or segmentation token.

    ``BraTS2021_00000_t1ce.nii.gz`` -> ``BraTS2021_00000``; ``BraTS2021_00000_seg.nii.gz`` -> ``BraTS2021_00000``;
    ``case7.nii.gz`` (a 4-D multi-channel file) -> ``case7``. A file named by its modality alone names its folder:
    ``patient1/t1.nii.gz`` -> ``patient1``. For a list of files, the first one names the case.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    stem = strip_nifti_suffix(Path(str(path)).name)
    if modality_from_filename(stem) is not None or is_segmentation_file(stem):
        for sep in ("_", "-", "."):
            head, found, _ = stem.rpartition(sep)
            if found and head:
                return head
        folder = Path(str(path)).parent.name
        if folder:
            return folder
    return stem


def _has_case_folders(dataset_dir: Path) -> bool:
    return dataset_dir.is_dir() and bool(_case_directories(dataset_dir))
