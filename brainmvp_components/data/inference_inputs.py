"""Cases to run a model on: from a datalist JSON (a list, a ``testing`` list or a split) or a folder of cases."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from brainmvp_components.data.checks import duplicate_case_problems
from brainmvp_components.data.datalist import _checked_entry
from brainmvp_components.data.discovery import discover_cases
from brainmvp_components.data.problems import DatasetIntegrityError, DatasetProblem

__all__ = [
    "inference_cases",
    "inference_entries",
]


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
