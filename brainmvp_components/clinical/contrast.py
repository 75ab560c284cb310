"""What weighting does an image show? The order of its grey-matter, white-matter and CSF intensities.

The template correlation of :mod:`~brainmvp_components.clinical.identity` tells t2 from the rest but not t1 or
t1c from FLAIR. The textbook tissue contrasts do:

| weighting | white matter vs grey matter | CSF vs grey matter |
|---|---|---|
| T1 (t1, t1c) | brighter | darker |
| T2 | darker | brighter |
| FLAIR | darker | darker (nulled) |

Once a study is in the atlas frame, the nominal brain's tissue maps
(:func:`~brainmvp_components.data.cohort.nominal_tissues`) say where each tissue mostly is. Only the cores are
used (fraction at least 0.9), so a few millimetres of misalignment or a tumour change little. Each image is
summarised by two numbers: the median intensity in the white-matter core minus that in the grey-matter core, and
the same for CSF, both divided by the interquartile range inside the brain. t1 and t1c share a weighting, so
this cannot tell them apart. The contrast agent in the DICOM header, or the name, has to do that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "WEIGHTINGS",
    "MIN_CONTRAST_STEP",
    "tissue_contrast",
    "weighting_of",
    "contrast_mismatches",
]

WEIGHTINGS: dict[str, str] = {"t1": "T1", "t1c": "T1", "t2": "T2", "flair": "FLAIR"}
"""The weighting each model modality shows."""

MIN_CONTRAST_STEP = 0.2
"""The tissue step (in interquartile ranges) a weighting needs (see :func:`weighting_of`)."""

T1_WHITE_MATTER_STEP = 0.45
"""White matter over grey matter that makes a dark-CSF image T1-weighted. Measured on 8 embedded cases (seed 11)
read against the nominal tissue maps: t1 and t1c +0.02 to +0.85 (12 of 16 above 0.45), FLAIR -0.65 to +0.28 (6 of
8 below -0.2); CSF steps of 0.5-5.9 in every modality, positive in t2 only. The thresholds leave the overlap
undecided: of those 32 images, 24 were called, none wrongly."""

_CORE_FRACTION = 0.9


def tissue_contrast(image: np.ndarray, mask: np.ndarray, tissues: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The two tissue steps of ``image`` (see the module docstring).

    Args:
        image: ``(H, W, D)`` on the grid of ``tissues``.
        mask: bool ``(H, W, D)``, the brain.
        tissues: ``gm``, ``wm``, ``csf`` fractions ``(H, W, D)``.

    Returns:
        ``{"wm_minus_gm": ..., "csf_minus_gm": ...}`` (``nan`` when a tissue core is empty inside the mask).
    """
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    inside = image[mask]
    if inside.size == 0:
        return {"wm_minus_gm": float("nan"), "csf_minus_gm": float("nan")}
    low, high = np.percentile(inside, [25, 75])
    scale = high - low if high > low else 1.0
    medians = {}
    for name in ("gm", "wm", "csf"):
        core = mask & (np.asarray(tissues[name]) >= _CORE_FRACTION)
        medians[name] = float(np.median(image[core])) / scale if core.any() else float("nan")
    return {
        "wm_minus_gm": medians["wm"] - medians["gm"],
        "csf_minus_gm": medians["csf"] - medians["gm"],
    }


def weighting_of(contrast: Mapping[str, float], min_step: float = MIN_CONTRAST_STEP) -> str | None:
    """``"T1"``, ``"T2"``, ``"FLAIR"`` or ``None`` (no clear pattern: the check abstains rather than guesses).

    CSF brighter than grey matter by ``min_step`` is T2. CSF darker by as much is T1 when white matter is brighter
    than grey matter by :data:`T1_WHITE_MATTER_STEP`, and FLAIR when it is darker by ``min_step``.
    """
    wm, csf = contrast["wm_minus_gm"], contrast["csf_minus_gm"]
    if not (np.isfinite(wm) and np.isfinite(csf)):
        return None
    if csf > min_step:
        return "T2"
    if csf < -min_step and wm > T1_WHITE_MATTER_STEP:
        return "T1"
    if csf < -min_step and wm < -min_step:
        return "FLAIR"
    return None


def contrast_mismatches(weightings: Mapping[str, str | None], names: Sequence[str] | None = None) -> dict[str, str]:
    """Claimed modality -> the modality its image shows, for images whose weighting contradicts their name.

    A mismatch is paired with the series whose name has the weighting this image shows while its own image shows
    the weighting of this name (an exchange of two names), else with such a series whose image is undecided.
    Without a partner, the image's weighting names a modality the study lacks (T1 as t1 before t1c). A weighting
    of ``None`` is never a contradiction by itself.

    Args:
        weightings: claimed modality -> the weighting :func:`weighting_of` found.
        names: the claimed modalities of the study (default: the keys of ``weightings``).
    """
    names = list(names if names is not None else weightings)
    wrong = {m: w for m, w in weightings.items() if w is not None and m in WEIGHTINGS and w != WEIGHTINGS[m]}
    undecided = [m for m, w in weightings.items() if w is None and m in WEIGHTINGS]
    shown: dict[str, str] = {}
    for claimed, weighting in wrong.items():
        if claimed in shown:
            continue
        exchanged = [o for o, w in wrong.items() if WEIGHTINGS.get(o) == weighting and w == WEIGHTINGS[claimed]]
        # second best: a series named with the weighting this image shows whose own image is undecided
        partners = exchanged or [o for o in undecided if WEIGHTINGS[o] == weighting and o not in shown]
        if partners and partners[0] != claimed:
            shown[claimed], shown[partners[0]] = partners[0], claimed
            continue
        candidates = [m for m, w in WEIGHTINGS.items() if w == weighting and m not in names]
        if candidates:
            shown[claimed] = candidates[0]
    return shown
