"""Acquisition sites: a small table of protocols that make one cohort look like scans from several scanners.

A site changes how a subject is imaged, not who the subject is: the anatomy, pathology and tissue parameters of
subject ``i`` are the same at every site. What a site sets (:class:`Site`):

- contrast: TR, TE and TI scaled in the signal equations (``signals.tissue_signals``), so tissue contrasts shift;
- resolution: the acquired voxel size per axis; coarser than the output grid is simulated by averaging slabs of
  that thickness and resampling back to the atlas grid (thick slices: 5 mm through-plane);
- bias field strength and noise level: scales of the nominal per-subject ranges;
- field of view: millimetres of the brain's inferior and superior extent left out (zeroed, label included);
- modalities: the contrasts the site acquires (``pretrain`` cohorts only; the others always have theirs).

``site=None`` everywhere means the nominal protocol of the cohort without sites; site ``A`` is that protocol
(identical bytes). ``docs/cohort.md`` describes the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from brainmvp_components.data.cohort.signals import COHORT_MODALITIES

__all__ = ["SITES", "SITES_CSV_NAME", "Site", "apply_field_of_view", "apply_resolution", "assign_sites", "get_site"]


SITES_CSV_NAME = "sites.csv"
"""The per-case site table a cohort with sites holds (columns ``case,site``)."""


@dataclass(frozen=True)
class Site:
    """One acquisition protocol.

    Args:
        name: the site's name in ``sites.csv``, datalists and study files.
        description: a few words on the scanner it stands for.
        tr_scale, te_scale, ti_scale: factors on every sequence's TR and TE, and on FLAIR's CSF-nulling TI (a
            TI off the null leaves CSF partly bright).
        resolution_mm: acquired voxel size (x, y, z) in mm; axes no coarser than the output grid are left as
            they are.
        bias_scale: factor on the bias-field amplitude range (nominal 0.06-0.15).
        noise_scale: factor on the noise level range (nominal 1-3 % of the brightest normal tissue).
        crop_inferior_mm, crop_superior_mm: brain extent (mm from its lowest/highest voxel) outside the field
            of view.
        modalities: contrasts this site acquires (``pretrain`` cohorts; each may still be missing at random).
    """

    name: str
    description: str
    tr_scale: float = 1.0
    te_scale: float = 1.0
    ti_scale: float = 1.0
    resolution_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bias_scale: float = 1.0
    noise_scale: float = 1.0
    crop_inferior_mm: float = 0.0
    crop_superior_mm: float = 0.0
    modalities: tuple[str, ...] = COHORT_MODALITIES

    def __post_init__(self) -> None:
        scales = (self.tr_scale, self.te_scale, self.ti_scale, self.bias_scale, self.noise_scale)
        if min(scales) <= 0 or min(self.resolution_mm) <= 0 or min(self.crop_inferior_mm, self.crop_superior_mm) < 0:
            raise ValueError(f"site {self.name!r}: scales and resolutions must be positive, crops non-negative")
        unknown = set(self.modalities) - set(COHORT_MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"site {self.name!r}: modalities must be a non-empty subset of {COHORT_MODALITIES}")

    @property
    def nominal(self) -> bool:
        """Whether imaging at this site is the cohort's nominal imaging (at any output spacing of 1 mm or more)."""
        return self == Site(self.name, self.description)


SITES: dict[str, Site] = {
    site.name: site
    for site in (
        Site("A", "3 T research protocol, 1 mm isotropic: the nominal cohort"),
        Site(
            "B",
            "1.5 T clinical tumour protocol, 1 x 1 x 5 mm axial slices, strong bias, no PD",
            tr_scale=0.8, te_scale=1.2, ti_scale=0.95, resolution_mm=(1.0, 1.0, 5.0), bias_scale=2.5,
            noise_scale=1.5, crop_superior_mm=12.0, modalities=("t1", "t1c", "t2", "flair"),
        ),
        Site(
            "C",
            "fast 2 mm isotropic screening protocol, noisy, cerebellum cut, no contrast agent",
            tr_scale=0.65, te_scale=0.8, ti_scale=1.05, resolution_mm=(2.0, 2.0, 2.0), bias_scale=1.5,
            noise_scale=2.0, crop_inferior_mm=20.0, modalities=("t1", "t2", "flair", "pd"),
        ),
        Site(
            "D",
            "3 T long-TR protocol, 1.5 mm in plane, 5 mm coronal slices, low noise, tight field of view",
            tr_scale=1.35, te_scale=1.1, ti_scale=1.0, resolution_mm=(1.5, 5.0, 1.5), bias_scale=2.0,
            noise_scale=0.6, crop_inferior_mm=8.0, crop_superior_mm=8.0,
        ),
    )
}  # fmt: skip
"""The built-in sites (``docs/cohort.md`` has them as a table)."""


def get_site(site: str | Site | None) -> Site | None:
    """A site by name (or as given); ``None`` stays ``None`` (the nominal protocol).

    Raises:
        ValueError: an unknown site name.
    """
    if site is None or isinstance(site, Site):
        return site
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; known: {sorted(SITES)}")
    return SITES[site]


def assign_sites(subjects: int, sites: Sequence[str]) -> list[str]:
    """Site of each subject index: ``sites`` round-robin (repeat a name to give that site more subjects)."""
    if not sites:
        raise ValueError("sites must name at least one site")
    for name in sites:
        get_site(name)
    return [sites[i % len(sites)] for i in range(int(subjects))]


def _linear_along(volume: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """``volume`` linearly interpolated at fractional ``positions`` along ``axis`` (clamped to the ends)."""
    n = volume.shape[axis]
    positions = np.clip(positions, 0.0, n - 1.0)
    low = np.floor(positions).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * volume.ndim
    shape[axis] = -1
    weight = (positions - low).astype(np.float32).reshape(shape)
    return np.take(volume, low, axis=axis) * (1.0 - weight) + np.take(volume, high, axis=axis) * weight


def apply_resolution(image: np.ndarray, spacing: float, resolution_mm: Sequence[float]) -> np.ndarray:
    """Simulate acquiring ``image`` (on a grid of ``spacing`` mm) at ``resolution_mm``: along each coarser axis,
    the mean over slabs of that thickness, sampled at the slab centres and interpolated back to the grid."""
    out = image
    for axis, thickness in enumerate(resolution_mm):
        width = float(thickness) / float(spacing)
        if width <= 1.0 + 1e-6:
            continue
        n = out.shape[axis]
        slabs = ndi.uniform_filter1d(out, size=max(int(round(width)), 1), axis=axis, mode="nearest")
        centres = np.arange(width / 2.0 - 0.5, n, width)
        sampled = _linear_along(slabs, centres, axis)
        # back to the grid: each grid position between two slab centres
        out = _linear_along(sampled, (np.arange(n) - centres[0]) / width, axis)
    return out.astype(np.float32, copy=False)


def apply_field_of_view(brain_mask: np.ndarray, spacing: float, site: Site) -> np.ndarray | None:
    """Boolean mask of the grid inside the site's field of view (``None`` when nothing is cut): the slices
    (last axis, inferior to superior) within ``crop_inferior_mm``/``crop_superior_mm`` of the brain's ends are
    outside."""
    if site.crop_inferior_mm <= 0 and site.crop_superior_mm <= 0:
        return None
    slices = np.flatnonzero(brain_mask.any(axis=(0, 1)))
    inside = np.ones(brain_mask.shape[2], dtype=bool)
    if slices.size:
        inside[: slices[0] + int(round(site.crop_inferior_mm / spacing))] = False
        if site.crop_superior_mm > 0:
            inside[slices[-1] + 1 - int(round(site.crop_superior_mm / spacing)) :] = False
    return np.broadcast_to(inside[None, None, :], brain_mask.shape)
