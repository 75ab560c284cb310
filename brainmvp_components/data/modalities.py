"""The modality registry: canonical MRI modality names and the spellings real releases use.

Every component that reads a modality name (file discovery, datalists, transforms, templates,
inference) resolves it here, so an alias such as ``t1ce``, ``T1Gd`` or ``t2f`` means the same thing
everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "CANONICAL_MODALITIES",
    "OFFICIAL_TEMPLATE_ORDER",
    "MODALITY_ALIASES",
    "UnknownModalityError",
    "canonical_modality",
    "canonical_modalities",
    "modality_index",
    "modality_from_filename",
    "is_segmentation_file",
    "strip_nifti_suffix",
]

CANONICAL_MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair", "pd", "mra", "dwi", "adc")
"""Canonical names, in the order used for template channels and modality indices."""

OFFICIAL_TEMPLATE_ORDER: tuple[str, ...] = ("flair", "t1", "t1c", "t2", "mra", "pd", "dwi", "adc")
"""Order of the eight templates in the authors' released ``rep_template`` tensor."""

MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w", "t1native", "t1pre", "mprage"),
    "t1c": ("t1c", "t1ce", "t1gd", "t1post", "t1contrast", "t1wce", "t1cegd", "t1cgd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2flair", "t2wflair", "flairt2"),
    "pd": ("pd", "pdw"),
    "mra": ("mra", "tof", "tofmra"),
    "dwi": ("dwi", "dw", "trace", "b1000"),
    "adc": ("adc",),
}

SEGMENTATION_NAMES: tuple[str, ...] = ("seg", "label", "labels", "mask", "msk", "gt", "segmentation", "tumor")

_ALIAS_TO_CANONICAL = {alias: name for name, aliases in MODALITY_ALIASES.items() for alias in aliases}
_NIFTI_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class UnknownModalityError(ValueError):
    """Raised when a modality name is not in the registry."""


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_modality(name: str) -> str:
    """Return the canonical name for ``name`` (case-insensitive; ``-``, ``_`` and spaces are ignored).

    Raises:
        UnknownModalityError: ``name`` is not a known modality or alias; the message lists the known names.
    """
    if not isinstance(name, str):
        raise UnknownModalityError(f"modality names are strings, got {type(name).__name__}: {name!r}")
    key = _normalise(name)
    if key not in _ALIAS_TO_CANONICAL:
        known = ", ".join(f"{canon} ({'/'.join(MODALITY_ALIASES[canon])})" for canon in CANONICAL_MODALITIES)
        raise UnknownModalityError(f"unknown modality {name!r}; known modalities and aliases: {known}")
    return _ALIAS_TO_CANONICAL[key]


def canonical_modalities(names) -> list[str]:
    """Canonicalise a sequence of names, rejecting duplicates (``t1ce`` and ``t1c`` in one case)."""
    result = [canonical_modality(n) for n in names]
    duplicates = sorted({m for m in result if result.count(m) > 1})
    if duplicates:
        raise ValueError(f"modalities {list(names)} name {duplicates} more than once")
    return result


def modality_index(name: str) -> int:
    """Index of a modality in :data:`CANONICAL_MODALITIES` (the template channel)."""
    return CANONICAL_MODALITIES.index(canonical_modality(name))


def strip_nifti_suffix(path: str | Path) -> str:
    """File name without directory and image suffix: ``a/BraTS_001_t1ce.nii.gz`` -> ``BraTS_001_t1ce``."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _trailing_token(path: str | Path) -> str:
    stem = strip_nifti_suffix(path)
    tokens = [t for t in re.split(r"[_\-.\s]+", stem) if t]
    return tokens[-1] if tokens else ""


def modality_from_filename(path: str | Path) -> str | None:
    """Canonical modality named by the last token of a file name, or ``None`` if it names none.

    Examples: ``BraTS2021_00000_t1ce.nii.gz`` -> ``t1c``; ``BraTS-GLI-00000-000-t2f.nii.gz`` -> ``flair``;
    ``UCSF-PDGM-0004_T1c.nii.gz`` -> ``t1c``; ``IXI002-Guys-0828-PD.nii.gz`` -> ``pd``.
    """
    stem = strip_nifti_suffix(path)
    for candidate in (_trailing_token(path), stem):
        try:
            return canonical_modality(candidate)
        except UnknownModalityError:
            continue
    return None


def is_segmentation_file(path: str | Path) -> bool:
    """Whether a file name marks a segmentation (``*_seg.nii.gz``, ``*-label.nii.gz``, ...)."""
    return _normalise(_trailing_token(path)) in SEGMENTATION_NAMES
