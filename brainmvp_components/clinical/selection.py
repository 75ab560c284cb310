"""Series chosen by selection rules, as MONAI Deploy's ``DICOMSeriesSelectorOperator`` chooses them, made into the
identified series that :meth:`~brainmvp_components.clinical.pipeline.HospitalStudySegmenter.segment_series` takes.

The rules are JSON in the SDK's format, ``{"selections": [{"name": ..., "conditions": {...}}]}``, with one
selection (or several) per modality, named by the modality (any alias of
:mod:`~brainmvp_components.data.modalities`). :data:`DEFAULT_SELECTION_RULES` picks MR series by their
SeriesDescription as the usual vendor spellings write them; a site with other names gives the application its own
rules file (:func:`load_selection_rules` checks it). The SDK matches a string condition as a case-insensitive
``re.search``; the rules therefore mark word edges with look-arounds rather than ``\\b`` (``SAG_T1_MPRAGE`` has no
``\\b`` before ``T1``).

Nothing here imports the SDK: :func:`assign_selected_series` takes each selected series as its selection name and
its files, reads it with :func:`~brainmvp_components.data.series.read_dicom_series` (the checks of the
hospital-study path) and refuses, with one line naming the series, what the study folder path refuses too: two
series for one modality, or one series selected as two modalities.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainmvp_components.data.identify import Identification
from brainmvp_components.data.modalities import canonical_modality
from brainmvp_components.data.series import NotAVolumeError, SkippedSeries, read_dicom_series

__all__ = ["DEFAULT_SELECTION_RULES", "load_selection_rules", "assign_selected_series"]

_START = r"(?<![a-z0-9])"
_END = r"(?![a-z0-9])"
_NOT_TARGET = (
    rf"^(?!.*({_START}(locali[sz]er|scout|survey|swi|swan|gre|perf\w*|dsc|dce|asl|dwi|adc|diff\w*|trace\w*)"
    rf"{_END}|t2 ?\*|t2[ _-]?star|{_START}map{_END}|mapping))"
)
_T1_WORDS = rf"({_START}t1w?(?![0-9])|mp[ _-]?rage|spgr|bravo|vibe|flash|tfe|tfl)"
_T1C_TOKEN = rf"{_START}t1w?[ _-]?(c|ce|gd|km){_END}"
_CONTRAST = (
    rf"({_START}post(?!er)|\+ ?c{_END}|\+ ?gd|{_START}c ?\+|{_START}gd{_END}|{_START}gad|contrast|{_START}km{_END})"
)
_PRE_CONTRAST = rf"{_START}(pre|w/o|without|non[ _-]?con\w*|native|nativ){_END}"
_FLAIR_WORDS = r"(flair|tirm|dark[ _-]?fluid)"

DEFAULT_SELECTION_RULES: dict[str, Any] = {
    "selections": [
        {
            "name": "t1c",
            "conditions": {
                "Modality": "MR",
                "SeriesDescription": (
                    rf"{_NOT_TARGET}(?!.*{_PRE_CONTRAST})(.*{_T1C_TOKEN}|(?=.*{_T1_WORDS}).*{_CONTRAST})"
                ),
            },
        },
        {
            "name": "t1",
            "conditions": {
                "Modality": "MR",
                "SeriesDescription": (
                    rf"{_NOT_TARGET}(?=.*{_PRE_CONTRAST}|(?!.*{_CONTRAST}))(?!.*{_T1C_TOKEN}).*{_T1_WORDS}"
                ),
            },
        },
        {
            "name": "t2",
            "conditions": {
                "Modality": "MR",
                "SeriesDescription": rf"{_NOT_TARGET}(?!.*{_FLAIR_WORDS}).*{_START}t2(?![0-9*])",
            },
        },
        {
            "name": "flair",
            "conditions": {
                "Modality": "MR",
                "SeriesDescription": rf"{_NOT_TARGET}(?!.*{_START}t1w?[ _-]*flair).*{_FLAIR_WORDS}",
            },
        },
    ]
}
"""One selection per modality of the segmentation model, on MR series' SeriesDescription: t1c needs a T1 word
(T1, MPRAGE, SPGR, BRAVO, VIBE, FLASH, TFE, TFL) with a contrast word (post, +C, C+, GD, gad..., contrast, KM) and
no pre-contrast word, or a token such as ``T1C``; t1 a T1 word and no contrast word, unless a pre-contrast word
(pre, w/o, native) says so; t2 a T2 word and no FLAIR word; flair FLAIR, TIRM or dark fluid, but not GE's T1
FLAIR (a t1). Localisers, SWI, perfusion, diffusion and parameter maps match none."""


def load_selection_rules(rules: str | os.PathLike | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The selection rules (``None``: :data:`DEFAULT_SELECTION_RULES`; a path: a JSON file; or the rules), checked:
    a ``selections`` list whose every name is a modality.

    Raises:
        ValueError: a file that is missing or not JSON, or rules not in the SDK's format (one line naming the file).
    """
    where = "the default rules"
    if rules is None:
        loaded: Any = DEFAULT_SELECTION_RULES
    elif isinstance(rules, Mapping):
        loaded, where = rules, "the given rules"
    else:
        path = Path(rules)
        where = str(path)
        if not path.is_file():
            raise ValueError(f"series selection rules {path}: no such file")
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"series selection rules {path}: not JSON ({err})") from None
    selections = loaded.get("selections") if isinstance(loaded, Mapping) else None
    if not isinstance(selections, list) or not selections:
        raise ValueError(f'series selection rules {where}: expected {{"selections": [...]}} with one or more rules')
    for number, selection in enumerate(selections, start=1):
        if not isinstance(selection, Mapping) or not isinstance(selection.get("conditions"), Mapping):
            raise ValueError(f"series selection rules {where}: selection {number} has no 'conditions' object")
        try:
            canonical_modality(str(selection.get("name", "")))
        except (KeyError, ValueError):
            raise ValueError(
                f"series selection rules {where}: selection {number} is named {selection.get('name')!r}, "
                "which is no modality; name each selection by the modality it picks (t1, t1c, t2, flair...)"
            ) from None
    return json.loads(json.dumps(loaded))


def assign_selected_series(
    selected: Sequence[tuple[str, Sequence[str | os.PathLike]]],
    modalities: Sequence[str] = ("t1", "t1c", "t2", "flair"),
    case: str | None = None,
) -> tuple[dict[str, Identification], list[SkippedSeries]]:
    """Read the selected series and give each wanted modality its one series.

    Args:
        selected: per selected series, the selection's name (a modality, any alias) and the series' DICOM files.
            The same series selected twice under one name (two rules for one modality) counts once.
        modalities: the model's modalities; series selected as others are skipped, with the reason.
        case: named in error messages.

    Returns:
        ``(modality -> Identification, in the order of modalities)`` and the series left out (localisers and
        other non-volumes, modalities the model does not take).

    Raises:
        ValueError: two series selected for one modality, one series selected as two modalities, or a series
            that cannot be read as one volume (:class:`~brainmvp_components.data.series.SeriesError`); one line
            naming the series (and the case when given).
    """
    wanted = [canonical_modality(m) for m in modalities]
    where = f"{case}: " if case else ""
    claims: dict[str, Identification] = {}
    by_files: dict[tuple[str, ...], Identification] = {}
    skipped: list[SkippedSeries] = []
    for name, files in selected:
        modality = canonical_modality(name)
        key = tuple(sorted(str(Path(f)) for f in files))
        if (earlier := by_files.get(key)) is not None:
            if earlier.modality == modality:
                continue
            raise ValueError(
                f"{where}series {earlier.series.name!r} is selected as both {earlier.modality} and {modality}; "
                "make the selection rules exclusive"
            )
        try:
            series = read_dicom_series(files)
        except NotAVolumeError as err:
            skipped.append(SkippedSeries(err.series or str(name), Path(files[0]).parent, err.reason))
            continue
        except ValueError as err:
            raise ValueError(f"{where}{err}") from None
        found = Identification(series, modality, f"selected by the series selection rule {name!r}")
        by_files[key] = found
        if modality not in wanted:
            skipped.append(SkippedSeries(series.name, series.path, f"selected as {modality}, not a model input"))
            continue
        if (first := claims.get(modality)) is not None:
            raise ValueError(
                f"{where}two series are selected as {modality}: {first.series.name!r} and {series.name!r}; "
                "narrow the selection rules (or remove one series)"
            )
        claims[modality] = found
    return {m: claims[m] for m in wanted if m in claims}, skipped
