"""Which MRI modality a hospital series is, from its names and sequence parameters, with the evidence for it.

Evidence is weighed in this order, the first that decides wins:

1. a user override (:func:`load_modality_map`): the series' exact name, file name or SeriesDescription, then
   keys read as regular expressions (full match, case-insensitive) or, failing that, shell-style patterns
   (``*flair*``), in the mapping's order;
2. for NIfTI, the file name through :func:`~brainmvp_components.data.modalities.modality_from_filename`;
3. the names: SeriesDescription, then ProtocolName (for NIfTI the header's description, then the file name)
   against :data:`NON_TARGET_RULES` and then :data:`DESCRIPTION_RULES`; a non-empty ContrastBolusAgent turns
   ``t1`` into ``t1c`` unless the name says pre-contrast;
4. ImageType values ``ADC`` (adc) and ``DIFFUSION``/``TRACEW`` (dwi);
5. the sequence parameters (:func:`modality_from_parameters`), not for echo-planar (ScanningSequence EP) series.

Names are matched after lower-casing and turning every character other than letters, digits, ``+`` and ``*``
into a space, so ``t2_tirm_tra_dark-fluid`` is read as ``t2 tirm tra dark fluid``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainmvp_components.data.modalities import (
    UnknownModalityError,
    canonical_modality,
    modality_from_filename,
    strip_nifti_suffix,
)
from brainmvp_components.data.series import ScanSeries

__all__ = [
    "Identification",
    "IdentificationError",
    "DESCRIPTION_RULES",
    "NON_TARGET_RULES",
    "IGNORE_VALUES",
    "load_modality_map",
    "normalise_description",
    "modality_from_description",
    "modality_from_parameters",
    "identify_series",
    "assign_modalities",
]

_T1_WORDS = r"t1w?|mp ?rage|fspgr|spgr|bravo|tfl\w*|tfe|vibe|flash|fl3d"
_CONTRAST_WORDS = r"post\w*|\+ ?c\b|\+ ?gd\b|c ?\+|\bgd\b|\bgad\w*|contrast|\bce\b|\bkm\b|enhanced"
_PRE_CONTRAST = r"\b(pre|w o|without|non ?contrast|non ?con|nc|native|nativ)\b"

NON_TARGET_RULES: tuple[tuple[str, str], ...] = (
    ("localizer", r"\b(locali[sz]er|scout|survey|aahead|3 ?plane|tri ?pilot)"),
    ("swi", r"\b(swi|swan|susc\w*|hemo\w*|t2 ?star|t2 fl2d|t2 gre|gre t2)\b|\bt2 ?\*"),
    ("relaxometry map", r"\bt[12]\*? ?(map|mapping|relax\w*)\b"),
    ("perfusion", r"\b(perf\w*|dsc|dce|asl|pcasl|pasl|pwi|r?cbv|cbf|mtt|ttp)\b"),
    ("spectroscopy", r"\b(svs|csi|spectro\w*|mrs)\b"),
    ("field map", r"\b(field ?map|b0 ?map)\b"),
)
"""``(label, regex)`` of series that are none of the registry's modalities: identified as ``None``; tried first."""

DESCRIPTION_RULES: tuple[tuple[str, str], ...] = (
    ("adc", r"\b(d?adc|apparent diff\w*)\b"),
    ("dwi", r"\b(dwi|dw|diff\w*|dti|trace\w*|b ?1000|resolve)\b"),
    ("mra", r"\b(mra|tof|angio\w*)"),
    ("pd", r"\b(pdw?|proton dens\w*)\b"),
    ("flair", r"(?<!t1 )(?<!t1w )\b(flair|tirm)|\bdark ?fluid|\bda fl\b|\bt2 ?fl\b|\bt2f\b|\bfluid att\w*"),
    (
        "t1c",
        rf"^(?!.*{_PRE_CONTRAST}).*(\bt1w? ?(c|ce|gd|post|km)\b|\b({_T1_WORDS}).*({_CONTRAST_WORDS})"
        rf"|({_CONTRAST_WORDS}).*\b({_T1_WORDS}))",
    ),
    ("t2", r"\bt2(?![0-9*])"),
    ("t1", rf"\b({_T1_WORDS})(?![0-9])"),
    ("t1c", rf"^(?!.*{_PRE_CONTRAST})(?!.*\bt2).*({_CONTRAST_WORDS})"),
)
"""``(canonical modality, regex)``, tried in order after :data:`NON_TARGET_RULES` (``re.search`` in the normalised
name). ``t1c`` needs a T1 word (t1, mprage, spgr, bravo, tfl, tfe, vibe, flash) with a contrast word (post, +c,
c+, gd, gad..., contrast, ce, km), or a contrast word alone when no T2 word is there, and no pre-contrast word
(pre, w/o, without, non-contrast, nc, native). ``T1 FLAIR`` (GE's T1-weighted FLAIR) is t1, not flair."""

IGNORE_VALUES: frozenset[str] = frozenset({"none", "ignore", "skip", "other"})
"""Override values (or JSON ``null``) that mark a series as none of the modalities: it stays unassigned."""

_NO_AGENT = {"", "none", "no", "n/a", "na", "nil", "0"}


class IdentificationError(ValueError):
    """Raised for a modality map that names an unknown modality, or two series claiming one modality."""


@dataclass
class Identification:
    """The modality of one series (canonical name, or ``None`` when not one of the registry's) and why."""

    series: ScanSeries
    modality: str | None
    evidence: str

    def __repr__(self) -> str:
        return f"Identification({self.series.name!r}, {self.modality!r}, {self.evidence!r})"


def _override_value(value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in IGNORE_VALUES):
        return None
    try:
        return canonical_modality(value)
    except UnknownModalityError as error:
        raise IdentificationError(f"{where}: {error}") from None


def load_modality_map(path: str | os.PathLike) -> dict[str, str | None]:
    """Read a modality map: JSON ``{"<series name, file name, SeriesDescription or regex>": "<modality>"}``.

    Values are resolved with :func:`~brainmvp_components.data.modalities.canonical_modality` (any alias); ``null``
    or one of :data:`IGNORE_VALUES` keeps the series out of every modality.

    Raises:
        FileNotFoundError: no such file.
        IdentificationError: not a JSON object of strings, or an unknown modality (naming the key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"modality map {path} does not exist")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IdentificationError(f"modality map {path} is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise IdentificationError(f"modality map {path} must be a JSON object of series -> modality")
    result = {}
    for key, value in document.items():
        if value is not None and not isinstance(value, str):
            raise IdentificationError(f"modality map {path}: {key!r} maps to {value!r}, not a modality name")
        result[key] = _override_value(value, f"modality map {path}: {key!r}")
    return result


def normalise_description(text: str) -> str:
    """Lower case, every character but letters, digits, ``+`` and ``*`` a space, spaces collapsed."""
    return " ".join(re.sub(r"[^a-z0-9+*]+", " ", text.lower()).split())


def modality_from_description(text: str) -> tuple[str | None, str] | None:
    """``(modality, label)`` of the first rule matching ``text``, or ``None`` if none does.

    A :data:`NON_TARGET_RULES` match gives ``(None, label)``; a :data:`DESCRIPTION_RULES` match gives
    ``(modality, modality)``.
    """
    normalised = normalise_description(text)
    for label, pattern in NON_TARGET_RULES:
        if re.search(pattern, normalised):
            return None, label
    for modality, pattern in DESCRIPTION_RULES:
        if re.search(pattern, normalised):
            return modality, modality
    return None


def _number(header: Mapping[str, Any], key: str) -> float | None:
    value = header.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _agent(header: Mapping[str, Any]) -> str | None:
    agent = header.get("ContrastBolusAgent")
    return None if agent is None or str(agent).strip().lower() in _NO_AGENT else str(agent).strip()


def modality_from_parameters(header: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(modality, evidence)`` from TR, TE and TI (ms), or ``None`` when they fit no rule.

    Rules, in order: TI > 1500 and TE > 70: flair; TR > 2000 and TE > 70: t2; TR < 1200 and TE < 30: t1; TE < 10
    and 300 <= TI <= 1300 (inversion-prepared gradient echo, MPRAGE): t1. Echo-planar series (ScanningSequence
    EP: diffusion, perfusion) are not judged. A t1 with a ContrastBolusAgent is t1c.
    """
    scanning = header.get("ScanningSequence") or []
    if "EP" in ([scanning] if isinstance(scanning, str) else scanning):
        return None
    tr, te, ti = (_number(header, k) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    found = None
    if ti is not None and te is not None and ti > 1500 and te > 70:
        found = "flair", f"TI {ti:g} ms > 1500 and TE {te:g} ms > 70"
    elif tr is not None and te is not None and tr > 2000 and te > 70:
        found = "t2", f"TR {tr:g} ms > 2000 and TE {te:g} ms > 70"
    elif tr is not None and te is not None and tr < 1200 and te < 30:
        found = "t1", f"TR {tr:g} ms < 1200 and TE {te:g} ms < 30"
    elif ti is not None and te is not None and te < 10 and 300 <= ti <= 1300:
        found = "t1", f"TE {te:g} ms < 10 and TI {ti:g} ms in 300-1300 (inversion-prepared gradient echo)"
    if found is None:
        return None
    modality, evidence = found
    if modality == "t1" and (agent := _agent(header)) is not None:
        return "t1c", f"{evidence}: t1, and ContrastBolusAgent {agent!r} makes it t1c"
    return modality, f"{evidence}: {modality}"


def _override(series: ScanSeries, overrides: Mapping[str, str | None]) -> Identification | None:
    description = series.header.get("SeriesDescription")
    exact = [("series name", series.name), ("file name", series.path.name if series.source == "nifti" else None)]
    exact.append(("SeriesDescription", description))
    for what, text in exact:
        if text is not None and text in overrides:
            modality = _override_value(overrides[text], f"override {text!r}")
            return Identification(series, modality, f"override {text!r} ({what}) -> {modality}")
    for key, value in overrides.items():
        for what, text in exact:
            if text is not None and (kind := _pattern_match(key, text)) is not None:
                modality = _override_value(value, f"override {key!r}")
                return Identification(
                    series, modality, f"override {kind} {key!r} matches {what} {text!r} -> {modality}"
                )
    return None


def _pattern_match(key: str, text: str) -> str | None:
    """``"regex"`` or ``"pattern"`` when ``key`` matches all of ``text`` as a regex or a shell-style glob."""
    try:
        if re.fullmatch(key, text, re.IGNORECASE):
            return "regex"
    except re.error:
        pass
    return "pattern" if any(c in key for c in "*?[") and fnmatch.fnmatchcase(text.lower(), key.lower()) else None


def _names(series: ScanSeries) -> list[tuple[str, str]]:
    if series.source == "nifti":
        fields = [("NIfTI description", series.header.get("description")), ("file name", series.path.name)]
    else:
        fields = [(key, series.header.get(key)) for key in ("SeriesDescription", "ProtocolName")]
    return [(what, str(text)) for what, text in fields if text]


def _from_names(series: ScanSeries) -> Identification | None:
    for what, text in _names(series):
        found = modality_from_description(strip_nifti_suffix(text) if what == "file name" else text)
        if found is None:
            continue
        modality, label = found
        evidence = f"{what} {text!r} matches {label}"
        if modality is None:
            return Identification(series, None, f"{evidence} (not a modality of the registry)")
        agent = _agent(series.header)
        if modality == "t1" and agent is not None and not re.search(_PRE_CONTRAST, normalise_description(text)):
            return Identification(series, "t1c", f"{evidence}; ContrastBolusAgent {agent!r} makes it t1c")
        return Identification(series, modality, evidence)
    return None


def _from_image_type(series: ScanSeries) -> Identification | None:
    values = {str(v).upper() for v in series.header.get("ImageType") or []}
    if "ADC" in values:
        return Identification(series, "adc", "ImageType contains ADC")
    if values & {"DIFFUSION", "TRACEW"}:
        return Identification(series, "dwi", f"ImageType contains {'/'.join(sorted(values & {'DIFFUSION', 'TRACEW'}))}")
    return None


def identify_series(series: ScanSeries, overrides: Mapping[str, str | None] | None = None) -> Identification:
    """The modality of ``series`` and the evidence for it (see the module's order of evidence).

    Args:
        series: a series read by :mod:`brainmvp_components.data.series`.
        overrides: series name, file name, SeriesDescription or regex -> modality (any alias; ``None`` or one of
            :data:`IGNORE_VALUES` for none), as :func:`load_modality_map` returns.

    Returns:
        the identification; ``modality`` is ``None`` when nothing identifies one of the registry's modalities.
    """
    if overrides and (found := _override(series, overrides)) is not None:
        return found
    if series.source == "nifti" and (modality := modality_from_filename(series.path)) is not None:
        return Identification(series, modality, f"file name {series.path.name!r} names {modality}")
    for step in (_from_names, _from_image_type):
        if (found := step(series)) is not None:
            return found
    names = " or ".join(f"{what} {text!r}" for what, text in _names(series)) or "no name"
    if (by_parameters := modality_from_parameters(series.header)) is not None:
        modality, evidence = by_parameters
        return Identification(series, modality, f"no rule matches {names}; {evidence}")
    parameters = ", ".join(
        f"{short} {_number(series.header, key):g}" if _number(series.header, key) is not None else f"{short} absent"
        for short, key in (("TR", "RepetitionTime"), ("TE", "EchoTime"), ("TI", "InversionTime"))
    )
    return Identification(series, None, f"no rule matches {names}, and the sequence parameters ({parameters}) fit none")


def assign_modalities(
    series: Sequence[ScanSeries],
    overrides: Mapping[str, str | None] | None = None,
    modalities: Sequence[str] = ("t1", "t1c", "t2", "flair"),
) -> tuple[dict[str, Identification], list[Identification]]:
    """Identify every series and give each wanted modality its one series.

    Args:
        series: the study's series.
        overrides: as for :func:`identify_series`.
        modalities: the modalities wanted (any alias).

    Returns:
        ``(modality -> identification, in the order of modalities)`` for the ones found, and the identifications
        of the other series (other modalities, or none), in input order.

    Raises:
        IdentificationError: two series identified as one wanted modality (naming both and the evidence).
    """
    wanted = [canonical_modality(m) for m in modalities]
    claims: dict[str, Identification] = {}
    unassigned: list[Identification] = []
    for one in series:
        found = identify_series(one, overrides)
        if found.modality not in wanted:
            unassigned.append(found)
            continue
        if (first := claims.get(found.modality)) is not None:
            raise IdentificationError(
                f"two series claim {found.modality}: {first.series.name!r} ({first.evidence}) and "
                f'{one.name!r} ({found.evidence}); name the right one in a modality map (the other as "ignore")'
            )
        claims[found.modality] = found
    return {m: claims[m] for m in wanted if m in claims}, unassigned
