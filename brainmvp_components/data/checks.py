"""Integrity checks of a data set's files: shapes, values, affines, grids, segmentation labels, the labels file.

:func:`verify_case` checks every file of one discovered case, :func:`check_label_conventions` the data set as
a whole; :func:`file_shape_problem`, :func:`volume_problems` and :func:`grid_problem` are the per-file checks
also applied to images handed over at inference. The checks are described in ``docs/data.md``.
"""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from brainmvp_components.data.brats import BRATS_CONVENTIONS, label_set
from brainmvp_components.data.discovery import CaseFiles
from brainmvp_components.data.problems import DatasetIntegrityError, DatasetProblem

__all__ = [
    "BRATS_LABEL_CONVENTIONS",
    "verify_case",
    "file_shape_problem",
    "volume_problems",
    "grid_problem",
    "check_label_conventions",
    "read_labels_csv",
    "duplicate_case_problems",
]

BRATS_LABEL_CONVENTIONS: dict[str, tuple[int, ...]] = {name: label_set(name) for name in BRATS_CONVENTIONS}
"""Segmentation label sets accepted by default: BraTS 2018-2021 (enhancing = 4) and BraTS 2023 (enhancing = 3)."""

AFFINE_TOLERANCE = 1e-3
"""Largest absolute difference between two affines (mm, or mm per voxel) still counted as the same grid."""

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError, WrapStructError)


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
