"""Cohort kinds and naming conventions: case ids, modality file tokens, label values, argument checks."""

from __future__ import annotations

import numpy as np

from brainmvp_components.data.brats import BRATS_CONVENTIONS, NECROSIS_LABEL, OEDEMA_LABEL

__all__ = ["COHORT_KINDS", "LABEL_CONVENTIONS", "case_id", "modality_file_suffix", "label_values"]

COHORT_KINDS: tuple[str, ...] = ("pretrain", "brats", "adni")
LABEL_CONVENTIONS: tuple[str, ...] = tuple(BRATS_CONVENTIONS)

_KIND_CODES = {"pretrain": 0, "brats": 1, "adni": 2}
_CASE_PREFIX = {"pretrain": "PRETRAIN-SYN", "brats": "BraTS-SYN", "adni": "ADNI-SYN"}
_FILE_SUFFIX = {
    "brats2021": {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "pd": "pd"},
    "brats2023": {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", "pd": "pd"},
}
_LABEL_VALUES = {
    name: {"necrosis": NECROSIS_LABEL, "oedema": OEDEMA_LABEL, "enhancing": enhancing}
    for name, enhancing in BRATS_CONVENTIONS.items()
}
_ADNI_DIAGNOSES = ("CN", "AD")


def case_id(kind: str, index: int) -> str:
    """Case identifier: ``BraTS-SYN-00000``, ``PRETRAIN-SYN-00000`` or ``ADNI-SYN-00000``."""
    _check_kind(kind)
    return f"{_CASE_PREFIX[kind]}-{int(index):05d}"


def modality_file_suffix(modality: str, label_convention: str = "brats2021") -> str:
    """File-name token of a canonical modality in a naming convention (``t1c`` -> ``t1ce`` in BraTS 2021)."""
    _check_convention(label_convention)
    return _FILE_SUFFIX[label_convention][modality]


def label_values(label_convention: str = "brats2021") -> dict[str, int]:
    """Label value of each tumour region: ``necrosis``, ``oedema``, ``enhancing`` (4 in 2021, 3 in 2023)."""
    _check_convention(label_convention)
    return dict(_LABEL_VALUES[label_convention])


def _check_kind(kind: str) -> None:
    if kind not in COHORT_KINDS:
        raise ValueError(f"unknown cohort kind {kind!r}; expected one of {COHORT_KINDS}")


def _check_convention(label_convention: str) -> None:
    if label_convention not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown label convention {label_convention!r}; expected one of {LABEL_CONVENTIONS}")


def _check_arguments(kind: str, spacing: float, missing_rate: float, label_convention: str) -> None:
    _check_kind(kind)
    _check_convention(label_convention)
    if not np.isfinite(spacing) or spacing <= 0 or spacing > 8:
        raise ValueError(f"spacing must be a positive number of mm (at most 8), got {spacing}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
