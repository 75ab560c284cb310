"""MR signal physics: tissue and sequence parameters, spin-echo and inversion-recovery signals, imaging a subject.

- spin echo: ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` (t1, t1c, t2, pd, with per-sequence TR/TE);
- inversion recovery (flair): ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)`` with the inversion
  time that nulls cerebrospinal fluid.

Voxel intensity is the tissue-fraction weighted sum of the tissue signals, times a smooth bias field, with
Rician noise and a global scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COHORT_MODALITIES",
    "TISSUES",
    "TissueParameters",
    "TISSUE_PARAMETERS",
    "GADOLINIUM_T1",
    "SequenceParameters",
    "SEQUENCES",
    "spin_echo_signal",
    "inversion_recovery_signal",
    "csf_null_inversion_time",
    "tissue_signals",
]

COHORT_MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair", "pd")
"""Canonical names of the contrasts the cohort can synthesise."""

TISSUES: tuple[str, ...] = ("gm", "wm", "csf", "oedema", "enhancing", "necrosis")
"""Tissue classes whose fractions make up every voxel."""


@dataclass(frozen=True)
class TissueParameters:
    """Relaxation times (ms) and relative proton density of one tissue."""

    t1: float
    t2: float
    pd: float


TISSUE_PARAMETERS: dict[str, TissueParameters] = {
    "wm": TissueParameters(t1=830.0, t2=80.0, pd=0.70),
    "gm": TissueParameters(t1=1330.0, t2=110.0, pd=0.80),
    "csf": TissueParameters(t1=4000.0, t2=2000.0, pd=1.00),
    "oedema": TissueParameters(t1=1700.0, t2=250.0, pd=0.90),
    "enhancing": TissueParameters(t1=1400.0, t2=120.0, pd=0.85),
    "necrosis": TissueParameters(t1=3000.0, t2=800.0, pd=0.95),
}
"""Nominal tissue parameters at 1.5-3 T (literature-typical values); each subject jitters them."""

GADOLINIUM_T1: dict[str, float] = {"enhancing": 400.0}
"""T1 (ms) after gadolinium for tissues whose blood-brain barrier is broken; other tissues keep their T1."""


@dataclass(frozen=True)
class SequenceParameters:
    """One acquisition: repetition and echo times (ms); inversion recovery (TI nulls CSF) or spin echo."""

    tr: float
    te: float
    inversion: bool = False
    contrast_agent: bool = False


SEQUENCES: dict[str, SequenceParameters] = {
    "t1": SequenceParameters(tr=500.0, te=10.0),
    "t1c": SequenceParameters(tr=500.0, te=10.0, contrast_agent=True),
    "t2": SequenceParameters(tr=4000.0, te=100.0),
    "flair": SequenceParameters(tr=9000.0, te=90.0, inversion=True),
    "pd": SequenceParameters(tr=5000.0, te=15.0),
}
"""Nominal protocol per modality: T1w short TR/TE, T2w long TR/TE, PD long TR/short TE, FLAIR with CSF nulled."""


def spin_echo_signal(pd, t1, t2, tr: float, te: float):
    """Spin-echo signal ``PD (1 - exp(-TR/T1)) exp(-TE/T2)`` (scalars or arrays, times in ms)."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery_signal(pd, t1, t2, tr: float, te: float, ti: float):
    """Magnitude inversion-recovery signal ``PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``."""
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def csf_null_inversion_time(tr: float, t1_csf: float = TISSUE_PARAMETERS["csf"].t1) -> float:
    """Inversion time (ms) that nulls a tissue of longitudinal relaxation ``t1_csf`` at repetition time ``tr``."""
    return float(t1_csf * np.log(2.0 / (1.0 + np.exp(-tr / t1_csf))))


def _jittered_tissues(rng: np.random.Generator) -> dict[str, TissueParameters]:
    return {
        name: TissueParameters(
            t1=p.t1 * float(np.exp(rng.normal(0.0, 0.05))),
            t2=p.t2 * float(np.exp(rng.normal(0.0, 0.05))),
            pd=p.pd * float(np.exp(rng.normal(0.0, 0.03))),
        )
        for name, p in TISSUE_PARAMETERS.items()
    }


def tissue_signals(modality: str, tissues: Mapping[str, TissueParameters], tr_scale=1.0, te_scale=1.0, ti_scale=1.0):
    """Signal of each tissue for one modality (``SEQUENCES[modality]`` with TR/TE scaled; an inversion
    recovery's TI is the CSF-nulling time at the scaled TR, times ``ti_scale``)."""
    seq = SEQUENCES[modality]
    tr, te = seq.tr * tr_scale, seq.te * te_scale
    ti = csf_null_inversion_time(tr) * ti_scale if seq.inversion else None
    signals = {}
    for name, p in tissues.items():
        t1 = GADOLINIUM_T1.get(name, p.t1) if seq.contrast_agent else p.t1
        if seq.inversion:
            signals[name] = float(inversion_recovery_signal(p.pd, t1, p.t2, tr, te, ti))
        else:
            signals[name] = float(spin_echo_signal(p.pd, t1, p.t2, tr, te))
    return signals


def _image(
    rng: np.random.Generator,
    modality: str,
    fractions: Mapping[str, np.ndarray],
    tissues: Mapping[str, TissueParameters],
    bias_at,
    protocol: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Intensities of the brain voxels (1-D ``fractions``); ``bias_at(field)`` samples a smooth field there.

    ``protocol``: a site's factors (``tr_scale``, ``te_scale``, ``ti_scale``, ``bias_scale``, ``noise_scale``) on
    the nominal draws; the draws themselves do not change, so a site images the same subject."""
    factor = {"tr_scale": 1.0, "te_scale": 1.0, "ti_scale": 1.0, "bias_scale": 1.0, "noise_scale": 1.0}
    factor.update(protocol or {})
    signals = tissue_signals(
        modality,
        tissues,
        tr_scale=float(rng.uniform(0.95, 1.05)) * factor["tr_scale"],
        te_scale=float(rng.uniform(0.95, 1.05)) * factor["te_scale"],
        ti_scale=factor["ti_scale"],
    )
    n = fractions["gm"].shape
    clean = np.zeros(n, dtype=np.float32)
    for name in TISSUES:
        clean += np.float32(signals[name]) * fractions[name]
    amplitude = float(rng.uniform(0.06, 0.15)) * factor["bias_scale"]
    clean *= np.exp(amplitude * bias_at(rng)).astype(np.float32)
    reference = max(signals["gm"], signals["wm"], signals["csf"])
    sigma = np.float32(rng.uniform(0.01, 0.03) * factor["noise_scale"] * reference)
    noise = rng.standard_normal((2,) + n, dtype=np.float32) * sigma
    noisy = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2)
    scale = np.float32(np.exp(rng.uniform(np.log(400.0), np.log(3000.0))) / reference)
    return (noisy * scale).astype(np.float32)
