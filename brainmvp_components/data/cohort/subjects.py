"""Subject synthesis in memory: what a subject has (its design) and its images, label and tissue fractions.

Each subject draws its randomness from ``np.random.SeedSequence([seed, index, kind code])``, so a subject does
not depend on how many subjects are generated, and the same seed gives the same bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brainmvp_components.data.cohort.anatomy import _paste, _place_subject, _sample, _smooth_field, load_mni_tissue_maps
from brainmvp_components.data.cohort.lesions import _add_atrophy, _add_tumours
from brainmvp_components.data.cohort.naming import (
    _ADNI_DIAGNOSES,
    _KIND_CODES,
    _LABEL_VALUES,
    _check_arguments,
    _check_kind,
    case_id,
)
from brainmvp_components.data.cohort.signals import COHORT_MODALITIES, TISSUES, _image, _jittered_tissues
from brainmvp_components.data.cohort.sites import Site, apply_field_of_view, apply_resolution, get_site

__all__ = ["subject_design", "synthesise_subject"]


def _subject_streams(kind: str, index: int, seed: int) -> list[np.random.SeedSequence]:
    """Independent streams of one subject: anatomy, design, pathology, tissue parameters, imaging."""
    return np.random.SeedSequence([int(seed), int(index), _KIND_CODES[kind]]).spawn(5)


def subject_design(
    kind: str,
    index: int,
    seed: int = 0,
    missing_rate: float = 0.3,
    tumour_probability: float = 0.5,
    site: str | Site | None = None,
) -> dict[str, Any]:
    """What a subject has, without synthesising it (cheap): ``modalities`` (canonical names), ``has_tumour``,
    and for ``adni`` ``class_label`` (index parity: 0 CN, 1 AD), ``diagnosis`` and ``severity`` (CN in
    [0, 0.2], AD in [0.45, 1]). A ``pretrain`` subject imaged at ``site`` has only modalities the site acquires
    (at least one)."""
    _check_kind(kind)
    site = get_site(site)
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    rng = np.random.default_rng(_subject_streams(kind, index, seed)[1])
    if kind == "brats":
        return {"modalities": ["t1", "t1c", "t2", "flair"], "has_tumour": True}
    if kind == "pretrain":
        present = rng.random(len(COHORT_MODALITIES)) >= missing_rate
        acquired = np.array([site is None or m in site.modalities for m in COHORT_MODALITIES])
        present &= acquired
        if not present.any():
            choices = np.flatnonzero(acquired)
            present[choices[rng.integers(len(choices))]] = True
        modalities = [m for m, p in zip(COHORT_MODALITIES, present) if p]
        return {"modalities": modalities, "has_tumour": bool(rng.random() < tumour_probability)}
    class_label = int(index) % 2
    severity = float(rng.uniform(0.0, 0.2) if class_label == 0 else rng.uniform(0.45, 1.0))
    return {
        "modalities": ["t1"],
        "has_tumour": False,
        "class_label": class_label,
        "diagnosis": _ADNI_DIAGNOSES[class_label],
        "severity": severity,
    }


def synthesise_subject(
    kind: str,
    index: int,
    seed: int = 0,
    spacing: float = 2.0,
    missing_rate: float = 0.3,
    label_convention: str = "brats2021",
    tumour_probability: float = 0.5,
    site: str | Site | None = None,
) -> dict[str, Any]:
    """Synthesise one subject in memory.

    Args:
        kind: ``"brats"`` (t1, t1c, t2, flair and a tumour label), ``"pretrain"`` (a random non-empty subset of
            t1, t1c, t2, flair, pd; tumours in some subjects; no label file) or ``"adni"`` (t1 only, CN or AD).
        index: subject index (non-negative); with ``seed`` it alone determines the subject.
        seed: cohort seed.
        spacing: output grid spacing in mm (the BraTS atlas field of view, ``atlas_grid(spacing)``).
        missing_rate: ``pretrain`` only: probability that each modality is absent.
        label_convention: ``"brats2021"`` (enhancing = 4) or ``"brats2023"`` (enhancing = 3).
        tumour_probability: ``pretrain`` only: probability that the subject has tumours.
        site: the acquisition protocol (a name of :data:`~brainmvp_components.data.cohort.sites.SITES` or a
            :class:`~brainmvp_components.data.cohort.sites.Site`); ``None``: the nominal one. The site changes
            the imaging only: the same index and seed give the same anatomy and pathology at every site.

    Returns:
        dict with ``case`` (str), ``kind``, ``affine`` (4x4, the atlas grid), ``images`` ({canonical modality:
        float32 (H, W, D)}), ``label`` (uint8 (H, W, D) in ``label_convention``; all zero without tumour),
        ``brain_mask`` (bool (H, W, D)), ``tissues`` ({gm, wm, csf, oedema, enhancing, necrosis: float32
        fractions (H, W, D)}), ``n_tumours`` (int), and for ``adni`` also ``class_label`` (0 CN, 1 AD),
        ``diagnosis`` and ``severity``; with a site, ``site`` (its name).
    """
    site = get_site(site)
    _check_arguments(kind, spacing, missing_rate, label_convention)
    if int(index) != index or index < 0:
        raise ValueError(f"subject index must be a non-negative integer, got {index!r}")
    index = int(index)
    maps = load_mni_tissue_maps()
    streams = _subject_streams(kind, index, seed)
    rng_anatomy, rng_pathology, rng_tissue = (np.random.default_rng(streams[i]) for i in (0, 2, 3))

    placement = _place_subject(rng_anatomy, spacing, maps)
    coords = placement.mni_coords
    fractions = {name: _sample(getattr(maps, name), coords) for name in ("gm", "wm", "csf")}
    box_shape = fractions["gm"].shape
    for name in ("oedema", "enhancing", "necrosis"):
        fractions[name] = np.zeros(box_shape, dtype=np.float32)
    flat_coords = coords.reshape(3, -1)

    def sample_at(volume: np.ndarray, flat_index: np.ndarray, cval: float = 0.0) -> np.ndarray:
        return _sample(volume, flat_coords[:, flat_index], cval=cval)

    design = subject_design(kind, index, seed, missing_rate, tumour_probability, site=site)
    modalities, has_tumour = design["modalities"], design["has_tumour"]
    result: dict[str, Any] = {"case": case_id(kind, index), "kind": kind, "affine": placement.affine.copy()}
    if kind == "adni":
        result.update({k: design[k] for k in ("class_label", "diagnosis", "severity")})

    internal = np.zeros(box_shape, dtype=np.uint8)
    n_tumours = 0
    if has_tumour:
        internal, n_tumours = _add_tumours(
            rng_pathology, fractions, lambda i: sample_at(maps.depth, i) * placement.scale, spacing
        )
    if kind == "adni":
        tissue = np.flatnonzero(fractions["gm"] + fractions["wm"] > 0)
        local = {name: fractions[name].ravel()[tissue] for name in ("gm", "wm", "csf")}
        _add_atrophy(
            local,
            sample_at(maps.ventricle_distance, tissue, cval=100.0) * placement.scale,
            sample_at(maps.exterior_distance, tissue) * placement.scale,
            sample_at(maps.hippocampus, tissue),
            severity=result["severity"],
            ventricle_base_mm=float(rng_pathology.uniform(0.0, 1.5)),
            cortex_base_mm=float(rng_pathology.uniform(0.0, 0.4)),
        )
        for name, value in local.items():
            fractions[name].ravel()[tissue] = value

    mask = (fractions["gm"] + fractions["wm"] + fractions["csf"] + (internal > 0)) >= 0.5
    inside = np.flatnonzero(mask)
    voxel_fractions = {name: fractions[name].ravel()[inside] for name in TISSUES}
    positions = [np.arange(s.start, s.stop) / max(n - 1, 1) for s, n in zip(placement.box, placement.shape)]

    def bias_at(rng: np.random.Generator) -> np.ndarray:
        """A smooth unit-variance field over the field of view, at the brain voxels."""
        return _smooth_field(rng, (4, 4, 3), positions).ravel()[inside]

    tissues = _jittered_tissues(rng_tissue)
    protocol = None
    if site is not None:
        protocol = {k: getattr(site, k) for k in ("tr_scale", "te_scale", "ti_scale", "bias_scale", "noise_scale")}
    imaging_streams = dict(zip(COHORT_MODALITIES, streams[4].spawn(len(COHORT_MODALITIES))))
    images = {}
    for modality in modalities:  # each modality has its own stream: the others' presence does not change it
        rng = np.random.default_rng(imaging_streams[modality])
        box_image = np.zeros(box_shape, dtype=np.float32)
        box_image.ravel()[inside] = _image(rng, modality, voxel_fractions, tissues, bias_at, protocol)
        images[modality] = _paste(box_image, placement)
        if site is not None:
            images[modality] = apply_resolution(images[modality], spacing, site.resolution_mm)

    values = _LABEL_VALUES[label_convention]
    label = np.zeros(box_shape, dtype=np.uint8)
    label[internal == 1] = values["necrosis"]
    label[internal == 2] = values["oedema"]
    label[internal == 3] = values["enhancing"]
    label[~mask] = 0
    result.update(
        images=images,
        label=_paste(label, placement),
        brain_mask=_paste(mask, placement),
        tissues={name: _paste(fractions[name] * mask, placement) for name in TISSUES},
        n_tumours=n_tumours,
    )
    if site is not None:
        result["site"] = site.name
        _crop_to_field_of_view(result, spacing, site)
    return result


def _crop_to_field_of_view(subject: dict[str, Any], spacing: float, site: Site) -> None:
    """Zero what lies outside the site's field of view in the images, label, mask and tissue maps (in place)."""
    inside = apply_field_of_view(subject["brain_mask"], spacing, site)
    if inside is None:
        return
    for volumes in (subject["images"], subject["tissues"]):
        for name in volumes:
            volumes[name] = np.where(inside, volumes[name], 0).astype(volumes[name].dtype)
    for name in ("label", "brain_mask"):
        subject[name] = np.where(inside, subject[name], 0).astype(subject[name].dtype)
