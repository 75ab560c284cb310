"""BraTS label conventions and tumour regions, defined once for the cohort, datalists, transforms and metrics.

BraTS 2018-2021 label necrosis 1, oedema 2 and enhancing tumour 4; BraTS 2023 labels enhancing tumour 3.
The regions the networks predict are nested: tumour core TC = necrosis + enhancing, whole tumour WT = all
tumour, enhancing tumour ET = enhancing. This module imports nothing heavy, so command-line tools can use it.
"""

from __future__ import annotations

__all__ = [
    "NECROSIS_LABEL",
    "OEDEMA_LABEL",
    "BRATS_CONVENTIONS",
    "REGION_NAMES",
    "enhancing_label",
    "label_set",
    "brats_label_names",
]

NECROSIS_LABEL = 1
OEDEMA_LABEL = 2
BRATS_CONVENTIONS: dict[str, int] = {"brats2021": 4, "brats2023": 3}
"""Label convention name -> the value that marks enhancing tumour."""
REGION_NAMES: tuple[str, ...] = ("TC", "WT", "ET")
"""Region channels, in the order of the networks' outputs."""

_YEAR_ALIASES = {year: "brats2021" for year in ("2018", "2019", "2020", "2021")} | {"2023": "brats2023"}


def enhancing_label(convention: str) -> int:
    """The enhancing-tumour label value of a convention (``brats2021``: 4, ``brats2023``: 3)."""
    key = str(convention).lower().replace("-", "").replace("_", "")
    key = _YEAR_ALIASES.get(key.removeprefix("brats"), key)
    if key not in BRATS_CONVENTIONS:
        raise ValueError(f"unknown BraTS label convention {convention!r}; use one of {sorted(BRATS_CONVENTIONS)}")
    return BRATS_CONVENTIONS[key]


def label_set(convention: str) -> tuple[int, ...]:
    """All label values of a convention, background included: ``(0, 1, 2, 4)`` or ``(0, 1, 2, 3)``."""
    return (0, NECROSIS_LABEL, OEDEMA_LABEL, enhancing_label(convention))


def brats_label_names(convention: str) -> dict[int, str]:
    """Label value -> the BraTS name of the tissue, for outputs a viewer shows (DICOM SEG segment labels)."""
    return {
        NECROSIS_LABEL: "necrotic tumour core",
        OEDEMA_LABEL: "peritumoural oedema",
        enhancing_label(convention): "enhancing tumour",
    }
