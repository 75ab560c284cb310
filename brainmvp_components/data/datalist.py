"""Case discovery, integrity checks, splits and nested label fractions for BraTS-style data sets.

A data set is a folder with one sub-folder per case; each case folder holds one NIfTI file per modality
(recognised by file name through :mod:`brainmvp_components.data.modalities`) and optionally one segmentation.
:func:`build_datalist` discovers the cases, verifies every file, splits the cases and writes a MONAI
decathlon-style JSON; :func:`load_datalist` reads it back with absolute paths for a bundle's dataset, and
:func:`ensure_datalist` does both on demand (generating the embedded cohort into an empty folder first),
safely when several processes of one distributed run call it at once.

The datalist format and the checks are described in ``docs/data.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from brainmvp_components.data.brats import BRATS_CONVENTIONS, label_set
from brainmvp_components.data.modalities import (
    CANONICAL_MODALITIES,
    canonical_modalities,
    is_segmentation_file,
    modality_from_filename,
    strip_nifti_suffix,
)
from brainmvp_components.utils.writers import write_json

__all__ = [
    "BRATS_LABEL_CONVENTIONS",
    "DATALIST_NAME",
    "DEFAULT_LABEL_FRACTIONS",
    "SPLITS",
    "CaseFiles",
    "DatasetProblem",
    "DatasetIntegrityError",
    "discover_cases",
    "verify_case",
    "file_shape_problem",
    "volume_problems",
    "grid_problem",
    "check_label_conventions",
    "read_labels_csv",
    "split_cases",
    "nested_label_fractions",
    "build_datalist",
    "write_datalist",
    "load_datalist",
    "ensure_datalist",
    "case_id_from_path",
    "inference_cases",
    "inference_entries",
    "duplicate_case_problems",
]

logger = logging.getLogger(__name__)

DATALIST_NAME = "datalist.json"
"""File name :func:`ensure_datalist` gives the datalist inside the data set folder."""

LABELS_CSV_NAME = "labels.csv"
"""Classification labels file detected automatically in the data set folder."""

SPLITS: tuple[str, ...] = ("training", "validation", "test")
"""Split names, as in MONAI decathlon datalists."""

DEFAULT_LABEL_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
"""Label fractions of the training split stored as nested subsets by default."""

BRATS_LABEL_CONVENTIONS: dict[str, tuple[int, ...]] = {name: label_set(name) for name in BRATS_CONVENTIONS}
"""Segmentation label sets accepted by default: BraTS 2018-2021 (enhancing = 4) and BraTS 2023 (enhancing = 3)."""

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
AFFINE_TOLERANCE = 1e-3
"""Largest absolute difference between two affines (mm, or mm per voxel) still counted as the same grid."""

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError, WrapStructError)
_LOCK_NAME = ".datalist.lock"


@dataclass(frozen=True)
class DatasetProblem:
    """One integrity problem: the case (``None`` for the data set as a whole), the file and what is wrong."""

    case: str | None
    file: str | None
    message: str

    def __str__(self) -> str:
        where = [f"case {self.case!r}" if self.case is not None else "data set"]
        if self.file is not None:
            where.append(f"file {self.file}")
        return f"{', '.join(where)}: {self.message}"


class DatasetIntegrityError(ValueError):
    """Raised when a data set has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[DatasetProblem], header: str = "data set integrity check failed"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header} ({len(self.problems)} problem(s)):\n{lines}")


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


def file_shape_problem(
    case: str | None, path: str | os.PathLike, shape: Sequence[int], channels: int | None = None
) -> DatasetProblem | None:
    """Check an image file's dimensionality as stored, before any channel conversion.

    Args:
        case: the case named in the problem.
        path: the file named in the problem.
        shape: the shape stored in the file (``nibabel``'s ``image.shape``, or a reader's raw array shape).
        channels: ``None`` for a file holding one modality: it must be 3-D (a 4-D file with a single volume
            counts as 3-D). ``k`` for one multi-channel file holding the case's ``k`` modalities as volumes along
            its last axis (how MONAI Label hands images over): it must be 4-D with ``k`` volumes (or 3-D when
            ``k == 1``).

    Returns:
        the problem found, or ``None``.
    """
    shape = tuple(int(s) for s in shape)
    path = str(path)
    if channels is None:
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) == 4:
            return DatasetProblem(
                case,
                path,
                f"expected a 3-D volume (one modality per file), got a 4-D file with {shape[3]} volumes "
                f"(shape {shape}); a multi-channel file must be the case's only image, its channels named in "
                "'modalities'",
            )
        if len(shape) != 3:
            return DatasetProblem(case, path, f"expected a 3-D volume, got a {len(shape)}-D image (shape {shape})")
    else:
        volumes = shape[3] if len(shape) == 4 else 1 if len(shape) == 3 else None
        if volumes is None:
            return DatasetProblem(
                case, path, f"expected a 4-D multi-channel volume, got a {len(shape)}-D image (shape {shape})"
            )
        if volumes != channels:
            return DatasetProblem(
                case, path, f"holds {volumes} volume(s) (shape {shape}) but {channels} modalities are named"
            )
        shape = shape[:3]
    if min(shape) < 2:
        return DatasetProblem(case, path, f"a single slice, not a 3-D volume (shape {shape})")
    return None


def volume_problems(
    case: str | None, path: str | os.PathLike, data, affine=None, what: str | None = None
) -> list[DatasetProblem]:
    """Check the contents of one 3-D volume: a valid affine, finite values, not a constant image.

    Args:
        case, path: named in the problems.
        data: the voxel values ``(H, W, D)`` (array or CPU tensor).
        affine: the ``(4, 4)`` voxel-to-world affine, or ``None`` to skip its check.
        what: prefix of the messages, e.g. ``"volume 2 (t2)"`` for one channel of a multi-channel file.

    Returns:
        the problems found (empty when the volume is sound).
    """
    prefix = f"{what}: " if what else ""
    problems: list[DatasetProblem] = []
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            problems.append(
                DatasetProblem(case, str(path), f"{prefix}invalid (singular or non-finite) affine:\n{affine}")
            )
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        if not finite.all():
            count = int(finite.size - finite.sum())
            whole = "every voxel" if count == finite.size else f"of {finite.size} voxels"
            problems.append(
                DatasetProblem(case, str(path), f"{prefix}{count} non-finite (NaN or infinite) voxel(s), {whole}")
            )
            return problems
    if data.size and data.min() == data.max():
        problems.append(DatasetProblem(case, str(path), f"{prefix}constant image (every voxel is {data.flat[0]})"))
    return problems


def _read_volume(case: str, path: Path, problems: list[DatasetProblem]) -> tuple[np.ndarray, np.ndarray] | None:
    """Read one volume; return ``(data, affine)`` or ``None`` after recording a problem."""
    try:
        image = nib.load(str(path))
        problem = file_shape_problem(case, path, image.shape)
        if problem is not None:
            problems.append(problem)
            return None
        affine = np.asarray(image.affine, dtype=np.float64)
        data = np.asanyarray(image.dataobj).reshape(image.shape[:3])
    except _READ_ERRORS as e:
        problems.append(DatasetProblem(case, str(path), f"unreadable or corrupt ({type(e).__name__}: {e})"))
        return None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        problems.append(DatasetProblem(case, str(path), f"invalid (singular or non-finite) affine:\n{affine}"))
        return None
    return data, affine


def grid_problem(shape, affine, ref_shape, ref_affine, ref_name: str, atol: float = AFFINE_TOLERANCE) -> str | None:
    """Why a volume ``(shape, affine)`` is not on a reference grid (shapes equal, affines within ``atol`` mm), or
    ``None`` when it is."""
    if tuple(shape) != tuple(ref_shape):
        return f"shape {tuple(shape)} differs from {ref_name}'s {tuple(ref_shape)}"
    affine = np.asarray(affine, dtype=np.float64)
    difference = float(np.max(np.abs(affine - np.asarray(ref_affine, dtype=np.float64))))
    if difference > atol:
        return f"affine differs from {ref_name}'s by up to {difference:.4g} (tolerance {atol:g}):\n{affine}"
    return None


def verify_case(
    case: CaseFiles,
    label_values: Sequence[int] | None = None,
    atol: float = AFFINE_TOLERANCE,
) -> list[DatasetProblem]:
    """Check every file of a case; return the problems found (an empty list means the case is sound).

    Checks: each file is readable (truncated or corrupt files are reported, not raised), 3-D (a 4-D volume
    with a singleton last axis counts as 3-D), has finite values and a valid affine, and images are not
    constant; all images share one grid (shape equal, affines within ``atol``); the segmentation lies on
    the images' grid, holds integers only, and its values are in ``label_values`` or, when that is
    ``None``, in one BraTS convention (``{0, 1, 2, 4}`` or ``{0, 1, 2, 3}``, not a mix).

    The values found in a readable segmentation are stored in ``case.label_values`` for the data-set-wide
    convention check (:func:`check_label_conventions`).

    Args:
        case: the case as returned by :func:`discover_cases`; its discovery problems are included.
        label_values: the allowed segmentation values, or ``None`` for the BraTS conventions.
        atol: affine tolerance (mm).
    """
    problems = list(case.problems)
    reference: tuple[str, tuple[int, ...], np.ndarray] | None = None
    for modality in case.modalities:
        path = case.images[modality]
        volume = _read_volume(case.case, path, problems)
        if volume is None:
            continue
        data, affine = volume
        found = volume_problems(case.case, path, data)
        problems.extend(found)
        if any("non-finite" in p.message for p in found):
            continue
        if reference is None:
            reference = (modality, data.shape, affine)
        else:
            message = grid_problem(data.shape, affine, reference[1], reference[2], reference[0], atol)
            if message is not None:
                problems.append(DatasetProblem(case.case, str(path), f"not on the case's grid: {message}"))
    if case.label is not None:
        problems.extend(_verify_label(case, reference, label_values, atol))
    return problems


def _verify_label(case: CaseFiles, reference, label_values, atol: float) -> list[DatasetProblem]:
    problems: list[DatasetProblem] = []
    path = case.label
    volume = _read_volume(case.case, path, problems)
    if volume is None:
        return problems
    data, affine = volume
    if reference is not None:
        message = grid_problem(data.shape, affine, reference[1], reference[2], reference[0], atol)
        if message is not None:
            problems.append(DatasetProblem(case.case, str(path), f"segmentation not on the image grid: {message}"))
    values = np.unique(data)
    if np.issubdtype(values.dtype, np.floating) and not (
        np.all(np.isfinite(values)) and np.all(values == np.round(values))
    ):
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        problems.append(DatasetProblem(case.case, str(path), f"non-integer segmentation values {bad[:10].tolist()}"))
        return problems
    present = {int(v) for v in values}
    case.label_values = frozenset(present)
    if label_values is not None:
        unexpected = sorted(present - {int(v) for v in label_values})
        if unexpected:
            problems.append(
                DatasetProblem(
                    case.case,
                    str(path),
                    f"segmentation values {unexpected} outside the declared set {sorted(label_values)}",
                )
            )
    elif {3, 4} <= present:
        problems.append(
            DatasetProblem(
                case.case,
                str(path),
                f"segmentation values {sorted(present)} mix the BraTS 2021 (enhancing = 4) and BraTS 2023 "
                "(enhancing = 3) conventions",
            )
        )
    elif not any(present <= set(values) for values in BRATS_LABEL_CONVENTIONS.values()):
        conventions = ", ".join(f"{name} {list(v)}" for name, v in BRATS_LABEL_CONVENTIONS.items())
        problems.append(
            DatasetProblem(
                case.case,
                str(path),
                f"segmentation values {sorted(present)} fit no BraTS convention ({conventions}); "
                "pass label_values (--label-values) for another label set",
            )
        )
    return problems


def check_label_conventions(cases: Sequence[CaseFiles]) -> tuple[str | None, list[DatasetProblem]]:
    """Check that the segmentations of sound cases do not mix BraTS conventions across the data set.

    Returns the convention in use (``None`` when no segmentation decides it) and one problem for each case
    of the less frequent convention when both occur. Uses the values :func:`verify_case` found.
    """
    by_convention: dict[str, list[CaseFiles]] = {name: [] for name in BRATS_LABEL_CONVENTIONS}
    for case in cases:
        if case.label_values is None:
            continue
        fitting = [name for name, allowed in BRATS_LABEL_CONVENTIONS.items() if case.label_values <= set(allowed)]
        if len(fitting) == 1:
            by_convention[fitting[0]].append(case)
    used = sorted((name for name in by_convention if by_convention[name]), key=lambda n: -len(by_convention[n]))
    if len(used) <= 1:
        return (used[0] if used else None), []
    majority, minority = used[0], used[1]
    problems = [
        DatasetProblem(
            case.case,
            str(case.label),
            f"segmentation uses the {minority} convention {list(BRATS_LABEL_CONVENTIONS[minority])} while "
            f"{len(by_convention[majority])} other case(s) use {majority} {list(BRATS_LABEL_CONVENTIONS[majority])}",
        )
        for case in by_convention[minority]
    ]
    return majority, problems


def read_labels_csv(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], list[DatasetProblem]]:
    """Read a classification labels file with columns ``case,label`` (and optionally ``diagnosis``).

    Returns ``({case: {"label": int, "diagnosis": str (when the column exists)}}, problems)``; rows with a
    non-integer or negative label and repeated cases are problems of that case.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetIntegrityError: the file lacks the ``case`` or ``label`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    rows: dict[str, dict[str, Any]] = {}
    problems: list[DatasetProblem] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("case", "label") if c not in columns]
        if missing:
            raise DatasetIntegrityError(
                [DatasetProblem(None, str(path), f"missing column(s) {missing}; found {columns}")],
                header="unusable labels file",
            )
        reader.fieldnames = columns
        for line, row in enumerate(reader, start=2):
            case = (row.get("case") or "").strip()
            if not case:
                problems.append(DatasetProblem(None, str(path), f"line {line}: empty case name"))
                continue
            text = (row.get("label") or "").strip()
            try:
                label = int(text)
            except ValueError:
                problems.append(DatasetProblem(case, str(path), f"line {line}: label {text!r} is not an integer"))
                continue
            if label < 0:
                problems.append(DatasetProblem(case, str(path), f"line {line}: negative label {label}"))
                continue
            if case in rows:
                problems.append(DatasetProblem(case, str(path), f"line {line}: case listed more than once"))
                continue
            rows[case] = {"label": label}
            if "diagnosis" in columns:
                rows[case]["diagnosis"] = (row.get("diagnosis") or "").strip()
    return rows, problems


def _class_names(rows: dict[str, dict[str, Any]], path: Path) -> tuple[list[str] | None, list[DatasetProblem]]:
    """Class names indexed by label, from the ``diagnosis`` column; ``None`` when there is no such column."""
    if not rows or "diagnosis" not in next(iter(rows.values())):
        return None, []
    names: dict[int, str] = {}
    problems = []
    for case, row in rows.items():
        label, diagnosis = row["label"], row["diagnosis"]
        if names.setdefault(label, diagnosis) != diagnosis:
            problems.append(
                DatasetProblem(
                    case, str(path), f"label {label} named {diagnosis!r}, but {names[label]!r} elsewhere in the file"
                )
            )
    absent = [i for i in range(max(names) + 1) if i not in names]
    if absent:
        problems.append(DatasetProblem(None, str(path), f"no case has label(s) {absent}, so they have no class name"))
        return None, problems
    return [names[i] for i in range(len(names))], problems


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def split_cases(
    case_ids: Sequence[str],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    strata: Mapping[str, object] | None = None,
) -> dict[str, list[str]]:
    """Split case ids into ``training``/``validation``/``test`` by one seeded shuffle.

    Split sizes are ``round(n * fraction)``, at least one case when the fraction is positive; each split is
    returned sorted. The same ids and seed give the same splits whatever the input order. With ``strata``
    (case id -> class label) the shuffle is stratified: every class is spread over the splits in proportion
    to its size, so a small validation split of a classification cohort still holds every class.

    Raises:
        ValueError: a fraction outside [0, 1), duplicated ids, or no case left for training.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"case ids are not unique: {sorted({i for i in ids if ids.count(i) > 1})}")
    n = len(ids)

    def size(fraction: float) -> int:
        return max(1, round(n * fraction)) if fraction > 0 else 0

    n_val, n_test = size(val_fraction), size(test_fraction)
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} case(s) cannot be split with val_fraction={val_fraction} and test_fraction={test_fraction}: "
            "no case would be left for training"
        )
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(n)]
    if strata is not None:
        order = _stratified_order(order, strata, rng)
    return {
        "training": sorted(order[n_val + n_test :]),
        "validation": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


def _stratified_order(order: list[str], strata: Mapping[str, object], rng: np.random.Generator) -> list[str]:
    """Interleave classes so that any prefix of the result holds each class in proportion to its size."""
    groups: dict[object, list[str]] = {}
    for case in order:
        groups.setdefault(strata[case], []).append(case)
    keyed = []
    for members in groups.values():
        offset = rng.random()
        keyed += [((rank + offset) / len(members), case) for rank, case in enumerate(members)]
    return [case for _, case in sorted(keyed)]


def _fraction_key(fraction: float) -> str:
    return f"{float(fraction):g}"


def nested_label_fractions(
    training_ids: Sequence[str],
    fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS,
    seed: int = 0,
    strata: Mapping[str, object] | None = None,
) -> dict[str, list[str]]:
    """Nested subsets of the training cases for label-efficiency experiments.

    Subset ``f`` holds the first ``round(f * n)`` cases (at least one) of one seeded permutation of the
    training ids, so each smaller subset is contained in every larger one. Keys are the fractions written
    with ``%g`` (``"0.2"``); each subset is sorted. With ``strata`` (case id -> class label) every subset keeps
    the classes in proportion.

    Raises:
        ValueError: a fraction outside (0, 1].
    """
    ids = sorted(training_ids)
    # A permutation independent of the split shuffle, but fixed by the same seed.
    rng = np.random.default_rng([seed, 1])
    order = [ids[i] for i in rng.permutation(len(ids))]
    if strata is not None:
        order = _stratified_order(order, strata, rng)
    subsets = {}
    for fraction in sorted(float(f) for f in fractions):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"label fractions must be in (0, 1], got {fraction}")
        count = min(len(ids), max(1, round(fraction * len(ids)))) if ids else 0
        subsets[_fraction_key(fraction)] = sorted(order[:count])
    return subsets


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()


def write_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write a datalist JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
    return write_json(path, datalist)


def build_datalist(
    data_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    label_fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS,
    seed: int = 0,
    skip_bad: bool = False,
    labels_csv: str | os.PathLike | None = None,
    label_values: Sequence[int] | None = None,
    atol: float = AFFINE_TOLERANCE,
) -> dict:
    """Discover, verify and split the cases of ``data_dir`` and write the datalist JSON to ``out_file``.

    Every case is verified (:func:`verify_case`, :func:`check_label_conventions`). With any problem,
    nothing is written and :class:`DatasetIntegrityError` lists them all, unless ``skip_bad`` is set: then
    the bad cases are left out, logged and listed with their reasons under ``"excluded"``. Problems of the
    data set as a whole (no sound case, an unusable labels file) are never skipped.

    Args:
        data_dir: the data set folder (one sub-folder per case).
        out_file: the JSON to write; paths inside it are relative to its folder.
        val_fraction: fraction of the cases for ``validation``.
        test_fraction: fraction of the cases for ``test``.
        label_fractions: fractions of the training split stored as nested subsets under ``"label_fractions"``.
        seed: seed of the split shuffle and of the label-fraction permutation.
        skip_bad: write the datalist without the bad cases instead of failing.
        labels_csv: classification labels (columns ``case,label[,diagnosis]``); ``data_dir/labels.csv`` is
            used when present and this is ``None``. Each entry's ``label`` is then the integer class.
        label_values: allowed segmentation values; ``None`` accepts either BraTS convention (not a mix).
        atol: affine tolerance (mm) for "same grid".

    Returns:
        The datalist as written.
    """
    data_dir, out_file = Path(data_dir), Path(out_file)
    cases = discover_cases(data_dir)
    if labels_csv is None and (data_dir / LABELS_CSV_NAME).is_file():
        labels_csv = data_dir / LABELS_CSV_NAME
        logger.info("using classification labels from %s", labels_csv)

    dataset_problems: list[DatasetProblem] = []
    case_problems: dict[str, list[DatasetProblem]] = {}
    if not cases:
        dataset_problems.append(DatasetProblem(None, str(data_dir), "no case folders found"))
    for i, case in enumerate(cases, start=1):
        logger.info("verifying case %d/%d: %s", i, len(cases), case.case)
        found = verify_case(case, label_values=label_values, atol=atol)
        if found:
            case_problems[case.case] = found

    convention = None
    if label_values is None and labels_csv is None:
        convention, mixed = check_label_conventions([c for c in cases if c.case not in case_problems])
        for problem in mixed:
            case_problems.setdefault(problem.case, []).append(problem)

    class_rows: dict[str, dict[str, Any]] | None = None
    classes = None
    if labels_csv is not None:
        labels_csv = Path(labels_csv)
        class_rows, csv_problems = read_labels_csv(labels_csv)
        known = {c.case for c in cases}
        for problem in csv_problems:
            if problem.case in known:
                case_problems.setdefault(problem.case, []).append(problem)
            else:
                dataset_problems.append(problem)
        for case in cases:
            if case.case not in class_rows and not any(p.case == case.case for p in csv_problems):
                case_problems.setdefault(case.case, []).append(
                    DatasetProblem(case.case, str(labels_csv), "case has no row in the labels file")
                )
        unused = sorted(set(class_rows) - known)
        if unused:
            logger.warning("%s lists %d case(s) with no folder: %s", labels_csv, len(unused), unused[:10])
        usable = {k: v for k, v in class_rows.items() if k in known and k not in case_problems}
        classes, name_problems = _class_names(usable, labels_csv)
        for problem in name_problems:
            if problem.case is None:
                dataset_problems.append(problem)
            else:
                case_problems.setdefault(problem.case, []).append(problem)

    sound = [c for c in cases if c.case not in case_problems]
    if cases and not sound:
        dataset_problems.append(DatasetProblem(None, str(data_dir), "no case passed the integrity checks"))
    if dataset_problems or (case_problems and not skip_bad):
        problems = dataset_problems + [p for c in cases for p in case_problems.get(c.case, [])]
        raise DatasetIntegrityError(problems, header=f"data set {data_dir} failed the integrity check")
    for case in cases:
        for problem in case_problems.get(case.case, []):
            logger.warning("excluding %s", problem)

    root = out_file.parent
    union = [m for m in CANONICAL_MODALITIES if any(m in c.images for c in sound)]
    entries: dict[str, dict[str, Any]] = {}
    for case in sound:
        entry: dict[str, Any] = {
            "case": case.case,
            "image": [_relative(case.images[m], root) for m in case.modalities],
            "modalities": case.modalities,
        }
        if class_rows is not None:
            entry["label"] = class_rows[case.case]["label"]
            if "diagnosis" in class_rows[case.case]:
                entry["diagnosis"] = class_rows[case.case]["diagnosis"]
            if case.label is not None:
                entry["segmentation"] = _relative(case.label, root)
        elif case.label is not None:
            entry["label"] = _relative(case.label, root)
        entry["missing_modalities"] = [m for m in union if m not in case.images]
        entries[case.case] = entry

    strata = {case: entry["label"] for case, entry in entries.items()} if class_rows is not None else None
    splits = split_cases(
        list(entries), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strata=strata
    )
    datalist: dict[str, Any] = {
        "name": data_dir.resolve().name,
        "description": "BraTS-style data set verified and split by brainmvp_components.data.datalist",
        "tensorImageSize": "3D",
        "modalities": union,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    if class_rows is not None:
        datalist["task"] = "classification"
        datalist["num_classes"] = len(classes) if classes is not None else max(entries[c]["label"] for c in entries) + 1
        if classes is not None:
            datalist["classes"] = classes
    elif any("label" in e for e in entries.values()):
        datalist["task"] = "segmentation"
        if label_values is not None:
            datalist["label_values"] = sorted(int(v) for v in label_values)
        elif convention is not None:
            datalist["label_convention"] = convention
            datalist["label_values"] = list(BRATS_LABEL_CONVENTIONS[convention])
    datalist.update(
        {
            "numTraining": len(splits["training"]),
            "numValidation": len(splits["validation"]),
            "numTest": len(splits["test"]),
        }
    )
    for split in SPLITS:
        datalist[split] = [entries[c] for c in splits[split]]
    datalist["label_fractions"] = nested_label_fractions(splits["training"], label_fractions, seed=seed, strata=strata)
    datalist["excluded"] = [
        {
            "case": case.case,
            "problems": [
                {"file": None if p.file is None else _relative(Path(p.file), root), "message": p.message}
                for p in case_problems[case.case]
            ],
        }
        for case in cases
        if case.case in case_problems
    ]
    write_datalist(datalist, out_file)
    logger.info(
        "wrote %s: %d training, %d validation, %d test case(s), %d excluded; modalities %s",
        out_file,
        datalist["numTraining"],
        datalist["numValidation"],
        datalist["numTest"],
        len(datalist["excluded"]),
        union,
    )
    return datalist


def load_datalist(
    path: str | os.PathLike, split: str = "training", label_fraction: float | str | None = None
) -> list[dict]:
    """Read the entries of one split of a datalist, with absolute image and label paths.

    Args:
        path: the datalist JSON (paths in it are relative to its folder).
        split: ``"training"``, ``"validation"`` or ``"test"``.
        label_fraction: restrict ``training`` to the nested subset of that fraction of its cases; ``None`` or
            ``1.0`` is the whole split.

    Raises:
        FileNotFoundError: the datalist, or an entry's image or label file, does not exist (the message names
            the entry).
        ValueError: the split or label fraction is not in the datalist (the message lists those available), or
            an entry is malformed (no ``image``, unknown modality names, a name count that differs from the file
            count; the message names the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist")
    try:
        with open(path) as f:
            datalist = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"datalist {path} is not valid JSON: {e}") from e
    if split not in datalist or not isinstance(datalist[split], list):
        available = [s for s in SPLITS if isinstance(datalist.get(s), list)]
        raise ValueError(f"datalist {path} has no split {split!r}; available: {available}")
    entries = datalist[split]
    if label_fraction is not None and not math.isclose(float(label_fraction), 1.0):
        subsets = datalist.get("label_fractions", {})
        if split != "training":
            raise ValueError(f"label fractions apply to the training split, not {split!r} (datalist {path})")
        key = next((k for k in subsets if math.isclose(float(k), float(label_fraction))), None)
        if key is None:
            available = sorted(float(k) for k in subsets) + [1.0]
            raise ValueError(f"datalist {path} has no label fraction {label_fraction}; available: {available}")
        chosen = set(subsets[key])
        entries = [e for e in entries if e["case"] in chosen]
    root = path.parent.resolve()
    result = [_checked_entry(entry, number, path, root) for number, entry in enumerate(entries)]
    duplicates = duplicate_case_problems(result, f"datalist {path} ({split})")
    if duplicates:
        raise DatasetIntegrityError(duplicates, header=f"datalist {path} names cases ambiguously")
    for number, entry in enumerate(result):
        for key in ("label", "segmentation"):
            if isinstance(entry.get(key), str) and not Path(entry[key]).is_file():
                raise FileNotFoundError(
                    f"datalist {path}, {split} entry {number} (case {entry['case']!r}): {key} file {entry[key]} "
                    "does not exist"
                )
    return result


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


def _checked_entry(entry: Any, number: int, source: Path, root: Path) -> dict:
    """A datalist entry with absolute, existing image paths, a case name and known modality names."""
    where = f"datalist {source}, entry {number}"
    if not isinstance(entry, dict) or "image" not in entry:
        raise ValueError(f"{where}: expected an object with an 'image' key, got {entry!r}")
    images = entry["image"]
    single = isinstance(images, (str, os.PathLike))
    paths = [images] if single else images
    if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise ValueError(f"{where}: 'image' must be a path or a non-empty list of paths, got {images!r}")
    paths = [str((root / p).resolve()) for p in paths]
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{where}: image file {p} does not exist")
    result = {**entry, "image": paths[0] if single else paths}
    name = f"{where} (case {entry['case']!r})" if entry.get("case") else where
    modalities = entry.get("modalities")
    if modalities is None:
        # name the channels by file name: per-modality files, or one file whose name names its modality;
        # otherwise (a 4-D file named after its case) the bundle's configured channel order applies
        found = [modality_from_filename(p) for p in paths]
        if all(found):
            result["modalities"] = found
        elif not single:
            unnamed = [p for p, m in zip(paths, found) if m is None]
            raise ValueError(f"{name}: no 'modalities' given and no modality in the file name(s) {unnamed}")
    else:
        modalities = [modalities] if isinstance(modalities, str) else list(modalities)
        try:
            canonical_modalities(modalities)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{name}: bad 'modalities' {modalities}: {err}") from err
        if not single and len(modalities) != len(paths):
            raise ValueError(f"{name}: {len(paths)} image files but {len(modalities)} modalities {modalities}")
        result["modalities"] = modalities
    for key in ("label", "segmentation"):
        if isinstance(entry.get(key), str):
            result[key] = str((root / entry[key]).resolve())
    result["case"] = str(entry.get("case") or entry.get("id") or case_id_from_path(paths[0]))
    return result


def duplicate_case_problems(entries: Sequence[Mapping], source: str) -> list[DatasetProblem]:
    """One problem per case name given to more than one entry (compared case-insensitively, as outputs named
    after cases would collide on case-insensitive file systems)."""
    seen: dict[str, list[Mapping]] = {}
    for entry in entries:
        seen.setdefault(str(entry["case"]).casefold(), []).append(entry)
    problems = []
    for group in seen.values():
        if len(group) > 1:
            firsts = [e["image"] if isinstance(e["image"], str) else e["image"][0] for e in group]
            problems.append(
                DatasetProblem(
                    str(group[0]["case"]),
                    None,
                    f"{len(group)} entries of {source} are named {group[0]['case']!r} (first files: "
                    f"{', '.join(str(f) for f in firsts)}); their outputs would overwrite each other: give each "
                    "entry a unique 'case' (or 'id')",
                )
            )
    return problems


def inference_cases(
    datalist: str | os.PathLike | None = None, dataset_dir: str | os.PathLike | None = None, split: str = "test"
) -> list[dict]:
    """Cases to run a model on (segmentation or classification inference): from a datalist JSON, else a data set.

    Args:
        datalist: a JSON file holding a list of entries, or an object: a datalist with splits (e.g. from
            :func:`build_datalist`; its ``split`` is read with :func:`load_datalist`), or one with a
            ``"testing"`` list. Each entry has ``image``, a path or a list of per-modality paths (relative to
            the file's folder or absolute); optionally ``modalities`` (their names, any alias; without it the
            names come from the file names, or for a single file not naming a modality, from the bundle's
            configured input order) and ``case`` or ``id`` (without either, the first file's name without
            its modality token, or its folder's name for a file named by its modality alone).
        dataset_dir: used when ``datalist`` is not given: a BraTS-style folder with one sub-folder per case,
            modalities recognised by file name, segmentations ignored.
        split: the split read from a datalist with splits.

    Returns:
        Entries ``{"case", "image", "modalities", ...}`` with absolute image paths. ``image`` keeps its form: a
        single path stays a string (read by :class:`~brainmvp_components.transforms.io.LoadModalitiesd` as one,
        possibly 4-D multi-channel, file), a list stays a list of per-modality files.

    Raises:
        FileNotFoundError: neither source exists.
        ValueError: the datalist is not valid JSON or holds no entries.
        DatasetIntegrityError: some entries have problems (a missing image file, a malformed entry, a case folder
            with duplicate or no images, two entries of one case name); every problem is listed.
            :func:`inference_entries` returns the sound entries and the problems instead.
    """
    entries, problems = inference_entries(datalist, dataset_dir, split)
    problems += duplicate_case_problems(entries, "the inference cases")
    if problems:
        raise DatasetIntegrityError(problems, header="cannot use these cases for inference")
    return entries


def _missing_image(entry: Any, root: Path) -> str | None:
    """The first image path of a datalist entry that does not exist (absolute), or ``None``."""
    images = entry.get("image") if isinstance(entry, dict) else None
    paths = [images] if isinstance(images, (str, os.PathLike)) else images if isinstance(images, list) else []
    for p in paths:
        if isinstance(p, (str, os.PathLike)) and not (root / p).is_file():
            return str((root / p).resolve())
    return None


def inference_entries(
    datalist: str | os.PathLike | None = None, dataset_dir: str | os.PathLike | None = None, split: str = "test"
) -> tuple[list[dict], list[DatasetProblem]]:
    """The sound entries of :func:`inference_cases` and the problems of the others, without raising for a bad case.

    A datalist entry that names a missing file or is malformed, and a case folder with duplicate or no image
    files, becomes a :class:`DatasetProblem` naming the case (the entry's ``case``/``id``, the folder name, or
    ``entry <number>``); the other entries are returned. Entries sharing a case name are returned as they are
    (check them with :func:`duplicate_case_problems`). Problems of the source as a whole (no such datalist or
    folder, invalid JSON, no entries) still raise, as in :func:`inference_cases`.
    """
    problems: list[DatasetProblem] = []
    entries: list[dict] = []
    if datalist:
        path = Path(datalist)
        if not path.is_file():
            raise FileNotFoundError(f"datalist {path} does not exist")
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
        if isinstance(content, dict):
            if isinstance(content.get(split), list):
                content = content[split]
            elif isinstance(content.get("testing"), list):
                content = content["testing"]
            else:
                raise ValueError(f"datalist {path} is an object without a {split!r} or 'testing' list")
        if not isinstance(content, list) or not content:
            raise ValueError(f"datalist {path} holds no entries")
        root = path.parent.resolve()
        for number, entry in enumerate(content):
            try:
                entries.append(_checked_entry(entry, number, path, root))
            except (FileNotFoundError, ValueError) as err:
                name = entry.get("case") or entry.get("id") if isinstance(entry, dict) else None
                missing = _missing_image(entry, root) if isinstance(err, FileNotFoundError) else None
                problems.append(DatasetProblem(str(name or f"entry {number}"), missing, str(err)))
    else:
        if dataset_dir is None:
            raise ValueError("give a datalist file or a data set folder of cases")
        if not Path(dataset_dir).is_dir():
            raise FileNotFoundError(f"no datalist given and the data set folder {dataset_dir} does not exist")
        found = discover_cases(dataset_dir)
        if not found:
            raise FileNotFoundError(f"no case folders in {dataset_dir}")
        for case in found:
            if case.problems:
                problems.extend(case.problems)
            else:
                images = [str(case.images[m]) for m in case.modalities]
                entries.append({"case": case.case, "image": images, "modalities": case.modalities})
    return entries, problems


def _has_case_folders(dataset_dir: Path) -> bool:
    return dataset_dir.is_dir() and bool(_case_directories(dataset_dir))


def ensure_datalist(
    dataset_dir: str | os.PathLike,
    kind: str,
    subjects: int = 8,
    seed: int = 0,
    spacing: float = 2.0,
    **build_kwargs: Any,
) -> str:
    """Path of ``dataset_dir/datalist.json``, generating the embedded cohort and the datalist when missing.

    When ``dataset_dir`` holds no case folder, the embedded cohort of ``kind`` (``"pretrain"``, ``"brats"``,
    ``"adni"``) is generated there first (:func:`brainmvp_components.data.cohort.make_cohort`). A missing datalist
    is then built and verified by :func:`build_datalist` (``build_kwargs`` are passed on). An existing
    datalist is returned as is. Several processes may call this at once (the ranks of a ``torchrun`` job):
    an exclusive lock on ``dataset_dir/.datalist.lock`` lets one of them do the work while the others wait,
    then find the datalist written.

    Raises:
        DatasetIntegrityError: the data set fails the integrity check.
    """
    dataset_dir = Path(dataset_dir)
    out_file = dataset_dir / DATALIST_NAME
    if out_file.is_file():  # written atomically, so complete; no lock needed (the folder may be read-only)
        return str(out_file)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dataset_dir / _LOCK_NAME):
        if out_file.is_file():  # another process wrote it while this one waited
            return str(out_file)
        if not _has_case_folders(dataset_dir):
            from brainmvp_components.data.cohort import make_cohort

            logger.info(
                "%s holds no cases: generating the embedded %r cohort (%d subjects)", dataset_dir, kind, subjects
            )
            make_cohort(dataset_dir, kind, subjects, seed=seed, spacing=spacing)
        build_kwargs.setdefault("seed", seed)
        build_datalist(dataset_dir, out_file, **build_kwargs)
    return str(out_file)


@contextmanager
def _exclusive_lock(path: Path):
    """Hold an exclusive ``fcntl`` lock on ``path`` (created if needed), blocking until it is free."""
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no inter-process lock available
            logger.warning("fcntl is unavailable: %s does not guard against concurrent writers", path)
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
