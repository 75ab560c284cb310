"""The datalist file: build it from a data set folder, write it, load a split of it, ensure it exists.

:func:`build_datalist` discovers the cases, verifies every file, splits the cases and writes a MONAI
decathlon-style JSON; :func:`load_datalist` reads it back with absolute paths for a bundle's dataset, and
:func:`ensure_datalist` does both on demand (generating the embedded cohort into an empty folder first),
safely when several processes of one distributed run call it at once.

The datalist format is described in ``docs/data.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from brainmvp_components.data.checks import (
    AFFINE_TOLERANCE,
    BRATS_LABEL_CONVENTIONS,
    _class_names,
    check_label_conventions,
    duplicate_case_problems,
    read_labels_csv,
    verify_case,
)
from brainmvp_components.data.discovery import _has_case_folders, case_id_from_path, discover_cases
from brainmvp_components.data.modalities import CANONICAL_MODALITIES, canonical_modalities, modality_from_filename
from brainmvp_components.data.problems import DatasetIntegrityError, DatasetProblem
from brainmvp_components.data.splits import DEFAULT_LABEL_FRACTIONS, SPLITS, nested_label_fractions, split_cases
from brainmvp_components.utils.writers import write_json

__all__ = [
    "DATALIST_NAME",
    "build_datalist",
    "write_datalist",
    "load_datalist",
    "ensure_datalist",
]

logger = logging.getLogger(__name__)

DATALIST_NAME = "datalist.json"
"""File name :func:`ensure_datalist` gives the datalist inside the data set folder."""

LABELS_CSV_NAME = "labels.csv"
"""Classification labels file detected automatically in the data set folder."""

_LOCK_NAME = ".datalist.lock"


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
    site_of = _read_sites(data_dir)
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
        if case.case in site_of:
            entry["site"] = site_of[case.case]
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


def _read_sites(data_dir: Path) -> dict[str, str]:
    """``case -> site`` from ``data_dir/sites.csv`` (written by cohorts with sites); empty without the file."""
    from brainmvp_components.data.cohort.sites import SITES_CSV_NAME

    path = data_dir / SITES_CSV_NAME
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["case"]: row["site"] for row in csv.DictReader(f)}


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


def ensure_datalist(
    dataset_dir: str | os.PathLike,
    kind: str,
    subjects: int = 8,
    seed: int = 0,
    spacing: float = 2.0,
    cohort_options: Mapping[str, Any] | None = None,
    **build_kwargs: Any,
) -> str:
    """Path of ``dataset_dir/datalist.json``, generating the embedded cohort and the datalist when missing.

    When ``dataset_dir`` holds no case folder, the embedded cohort of ``kind`` (``"pretrain"``, ``"brats"``,
    ``"adni"``) is generated there first (:func:`brainmvp_components.data.cohort.make_cohort`). A missing datalist
    is then built and verified by :func:`build_datalist` (``build_kwargs`` are passed on). An existing
    datalist is returned as is. ``cohort_options`` are further arguments of ``make_cohort`` (``sites``,
    ``missing_rate``). Several processes may call this at once (the ranks of a ``torchrun`` job):
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
            make_cohort(dataset_dir, kind, subjects, seed=seed, spacing=spacing, **dict(cohort_options or {}))
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
