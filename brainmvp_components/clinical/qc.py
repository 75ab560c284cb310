"""Quality control of a hospital-study case: the figures that say whether its segmentation can be trusted.

:class:`CaseQC` gathers one case's figures (registration, brain extraction, tumour volumes, modality identity),
:func:`qc_flags` compares them with :data:`QC_RANGES` and returns one short sentence per value out of range,
and :func:`write_qc_csv` writes one row per case. A flag asks a person to look; it does not stop the pipeline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainmvp_components.data.brats import NECROSIS_LABEL, OEDEMA_LABEL, enhancing_label
from brainmvp_components.utils.writers import write_csv

__all__ = ["QC_RANGES", "CaseQC", "qc_flags", "tumour_volumes", "tumour_outside_fraction", "write_qc_csv", "QC_COLUMNS"]

QC_RANGES: dict[str, Any] = {
    "brain_volume_ml": (800.0, 2200.0),
    "max_tumour_outside_brain_fraction": 0.05,
    "max_whole_tumour_brain_fraction": 1.0 / 3.0,
    "max_registration_mi": -0.3,
    "max_slice_thickness_mm": 6.0,
    "min_brain_coverage": 0.9,
    "min_identity_margin": 0.15,
}
"""The ranges a plausible case lies in:

- ``brain_volume_ml``: (low, high) adult brain volume; outside it the brain extraction failed (or it is a child).
- ``max_tumour_outside_brain_fraction``: the fraction of predicted whole tumour outside the brain mask.
- ``max_whole_tumour_brain_fraction``: whole tumour at most a third of the brain.
- ``max_registration_mi``: Mattes mutual information of a series' co-registration, stored with ITK's sign
  (negative, lower is better): a value above this (closer to zero) says the series may not be aligned. Measured
  on aligned synthetic series (thick slices, t1c/t2/flair to t1c): -0.75 to -0.88.
- ``max_slice_thickness_mm``: thicker series are usable but coarse.
- ``min_brain_coverage``: the fraction of the reference brain mask that a registered series covers (its field of
  view); below it part of the brain has no data in that series.
- ``min_identity_margin``: the identity check's assignment margin below which a suggested modality swap is not
  trusted (:data:`brainmvp_components.clinical.identity.RELIABLE_ASSIGNMENT_MARGIN`).
"""

_REGIONS = ("WT", "TC", "ET")


@dataclass
class CaseQC:
    """The QC figures of one case.

    Attributes:
        case_id: the case.
        reference_series: the name of the series everything was registered to.
        registration_mi: series name -> Mattes MI of its registration to the reference (ITK sign, lower is
            better; the reference itself has none).
        slice_thickness_mm: series name -> slice thickness (the largest voxel spacing).
        brain_coverage: series name -> fraction of the reference brain mask inside the series' field of view.
        brain_volume_ml: volume of the brain mask.
        already_stripped: whether the reference arrived skull-stripped.
        brain_extraction: the brain extraction method used.
        tumour_volume_ml: region (``WT``, ``TC``, ``ET``) -> predicted volume.
        tumour_outside_brain_fraction: fraction of the predicted whole tumour outside the brain mask.
        identity: the identity check's summary (:meth:`IdentityCheck.as_record`), or ``None``.
        imputed_modalities: modalities the model got as templates because the study lacks them.
        seconds: wall time of the case.
        flags: set by :meth:`with_flags` (or by hand).
    """

    case_id: str
    reference_series: str
    registration_mi: dict[str, float] = field(default_factory=dict)
    slice_thickness_mm: dict[str, float] = field(default_factory=dict)
    brain_coverage: dict[str, float] = field(default_factory=dict)
    brain_volume_ml: float = float("nan")
    already_stripped: bool = False
    brain_extraction: str = ""
    tumour_volume_ml: dict[str, float] = field(default_factory=dict)
    tumour_outside_brain_fraction: float = 0.0
    identity: dict | None = None
    imputed_modalities: list[str] = field(default_factory=list)
    seconds: float = float("nan")
    flags: list[str] = field(default_factory=list)

    def as_record(self) -> dict:
        """JSON-ready dictionary (non-finite numbers become ``None``)."""
        return _json_ready(asdict(self))

    def with_flags(self, ranges: Mapping[str, Any] = QC_RANGES) -> CaseQC:
        """This QC with ``flags`` set by :func:`qc_flags`; returns ``self``."""
        self.flags = qc_flags(self.as_record(), ranges)
        return self


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else round(float(value), 4)
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def qc_flags(record: Mapping[str, Any], ranges: Mapping[str, Any] = QC_RANGES) -> list[str]:
    """One short sentence per figure of ``record`` (a :meth:`CaseQC.as_record`) outside ``ranges``."""
    ranges = {**QC_RANGES, **ranges}
    flags = []
    low, high = ranges["brain_volume_ml"]
    brain = record.get("brain_volume_ml")
    if not _finite(brain):
        flags.append("brain volume is missing")
    elif not low <= brain <= high:
        flags.append(f"brain volume {brain:.0f} ml is outside {low:.0f}-{high:.0f} ml")
    outside = record.get("tumour_outside_brain_fraction")
    if _finite(outside) and outside > ranges["max_tumour_outside_brain_fraction"]:
        flags.append(
            f"{outside:.1%} of the whole tumour lies outside the brain mask "
            f"(at most {ranges['max_tumour_outside_brain_fraction']:.0%})"
        )
    whole = (record.get("tumour_volume_ml") or {}).get("WT")
    if _finite(whole) and _finite(brain) and brain > 0 and whole / brain > ranges["max_whole_tumour_brain_fraction"]:
        flags.append(
            f"whole tumour {whole:.0f} ml is {whole / brain:.0%} of the brain "
            f"(at most {ranges['max_whole_tumour_brain_fraction']:.0%})"
        )
    for series, mi in sorted((record.get("registration_mi") or {}).items()):
        if not _finite(mi):
            flags.append(f"series {series}: registration metric is missing")
        elif mi > ranges["max_registration_mi"]:
            flags.append(
                f"series {series}: registration mutual information {mi:.3f} is above {ranges['max_registration_mi']} "
                "(ITK sign, lower is better): check its alignment"
            )
    for series, thickness in sorted((record.get("slice_thickness_mm") or {}).items()):
        if _finite(thickness) and thickness > ranges["max_slice_thickness_mm"]:
            flags.append(
                f"series {series}: slices {thickness:.1f} mm thick (above {ranges['max_slice_thickness_mm']} mm)"
            )
    for series, coverage in sorted((record.get("brain_coverage") or {}).items()):
        if _finite(coverage) and coverage < ranges["min_brain_coverage"]:
            flags.append(
                f"series {series}: covers {coverage:.0%} of the brain (at least {ranges['min_brain_coverage']:.0%})"
            )
    identity = record.get("identity") or {}
    margins = identity.get("assignment_margin") or {}
    contrast = identity.get("contrast") or {}
    looks = {
        claimed: looks_like
        for claimed, looks_like in (identity.get("mismatches") or {}).items()
        if _finite(margins.get(claimed)) and margins[claimed] >= ranges["min_identity_margin"]
    }
    if "reliable_mismatches" in identity:  # the joined verdict of the pipeline's identity checks decides
        looks = dict(identity["reliable_mismatches"])
    for claimed, looks_like in sorted(looks.items()):
        weighting = (contrast.get(claimed) or {}).get("weighting")
        margin = margins.get(claimed)
        evidence = [f"{weighting}-weighted tissue contrast"] if weighting else []
        if _finite(margin) and margin >= ranges["min_identity_margin"]:
            evidence.append(f"template assignment margin {margin:.2f}")
        flags.append(f"series named {claimed} looks like {looks_like} ({', '.join(evidence) or 'identity check'})")
    return flags


def tumour_volumes(labels: np.ndarray, affine: np.ndarray, convention: str = "brats2021") -> dict[str, float]:
    """Region volumes (ml) of a BraTS label map ``(i, j, k)`` placed by ``affine``: ``WT`` (all tumour labels),
    ``TC`` (necrosis + enhancing) and ``ET`` (enhancing: 4 in ``brats2021``, 3 in ``brats2023``)."""
    labels = np.asarray(labels)
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    enhancing = enhancing_label(convention)
    regions = {
        "WT": np.isin(labels, (NECROSIS_LABEL, OEDEMA_LABEL, enhancing)),
        "TC": np.isin(labels, (NECROSIS_LABEL, enhancing)),
        "ET": labels == enhancing,
    }
    return {name: float(region.sum()) * voxel_ml for name, region in regions.items()}


def tumour_outside_fraction(labels: np.ndarray, brain_mask: np.ndarray) -> float:
    """Fraction of the labelled (non-zero) voxels outside ``brain_mask`` (0 when there is no tumour)."""
    tumour = np.asarray(labels) > 0
    total = int(tumour.sum())
    return float((tumour & ~np.asarray(brain_mask, dtype=bool)).sum()) / total if total else 0.0


QC_COLUMNS = (
    "case_id",
    "reference_series",
    "brain_volume_ml",
    "already_stripped",
    "brain_extraction",
    "WT_ml",
    "TC_ml",
    "ET_ml",
    "tumour_outside_brain_fraction",
    "worst_registration_mi",
    "max_slice_thickness_mm",
    "min_brain_coverage",
    "identity_consistent",
    "imputed_modalities",
    "seconds",
    "n_flags",
    "flags",
    "error",
)
"""Columns of the QC CSV, one row per case."""


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    volumes = record.get("tumour_volume_ml") or {}
    mi = [v for v in (record.get("registration_mi") or {}).values() if _finite(v)]
    coverage = [v for v in (record.get("brain_coverage") or {}).values() if _finite(v)]
    thickness = [v for v in (record.get("slice_thickness_mm") or {}).values() if _finite(v)]
    identity = record.get("identity")
    flags = list(record.get("flags") or [])
    return {
        "case_id": record.get("case_id"),
        "reference_series": record.get("reference_series"),
        "brain_volume_ml": record.get("brain_volume_ml"),
        "already_stripped": record.get("already_stripped"),
        "brain_extraction": record.get("brain_extraction"),
        **{f"{region}_ml": volumes.get(region) for region in _REGIONS},
        "tumour_outside_brain_fraction": record.get("tumour_outside_brain_fraction"),
        "worst_registration_mi": max(mi) if mi else None,
        "max_slice_thickness_mm": max(thickness) if thickness else None,
        "min_brain_coverage": min(coverage) if coverage else None,
        "identity_consistent": None if identity is None else identity.get("consistent"),
        "imputed_modalities": " ".join(record.get("imputed_modalities") or []),
        "seconds": record.get("seconds"),
        "n_flags": len(flags),
        "flags": "; ".join(flags),
        "error": record.get("error"),
    }


def write_qc_csv(records: Sequence[CaseQC | Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write one row per case (:data:`QC_COLUMNS`) to ``path``, atomically; returns the path."""
    rows = [_row(r.as_record() if isinstance(r, CaseQC) else r) for r in records]
    return write_csv(path, rows, QC_COLUMNS)
