"""Pathology: tumours (necrosis, enhancing core, oedema) and graded atrophy, applied to tissue fractions."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from brainmvp_components.data.cohort.anatomy import _smooth_field


def _add_tumours(rng: np.random.Generator, fractions: dict[str, np.ndarray], depth_at, spacing: float):
    """Insert 1-3 irregular tumours (oedema around an enhancing core around a necrotic centre), in place.

    ``depth_at(flat_indices) -> mm``: distance of voxels to the outside of the brain (tumours stay inside).
    Returns the internal label map (1 necrosis, 2 oedema, 3 enhancing) and the number of tumours.
    """
    shape = fractions["gm"].shape
    parenchyma = fractions["gm"] + fractions["wm"]
    labels = np.zeros(shape, dtype=np.uint8)
    solid = np.flatnonzero(parenchyma > 0.8)[::3]
    solid_depth = depth_at(solid)
    n_tumours = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    for _ in range(n_tumours):
        r_core = float(rng.uniform(10.0, 22.0))
        r_oedema = min(r_core * float(rng.uniform(1.3, 1.8)), 30.0)
        r_necrosis = r_core * float(rng.uniform(0.5, 0.8)) if rng.random() < 0.85 else 0.0
        candidates = solid[solid_depth >= r_core + 6.0]
        if candidates.size == 0:
            candidates = solid[solid_depth >= np.percentile(solid_depth, 95)]
        centre = np.array(np.unravel_index(int(candidates[rng.integers(candidates.size)]), shape))
        half = int(np.ceil(1.6 * r_oedema / spacing))
        box = tuple(slice(max(c - half, 0), min(c + half + 1, n)) for c, n in zip(centre, shape))
        offsets = [(np.arange(s.start, s.stop) - c) * spacing for s, c in zip(box, centre)]
        rot = Rotation.random(random_state=rng).as_matrix()
        axes = rng.uniform(0.75, 1.3, size=3)
        d = [o.reshape([-1 if b == a else 1 for b in range(3)]) for a, o in enumerate(offsets)]
        local = [(rot[0, a] * d[0] + rot[1, a] * d[1] + rot[2, a] * d[2]) / axes[a] for a in range(3)]
        radius = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
        positions = [(o - o[0]) / max(o[-1] - o[0], 1e-6) for o in offsets]

        def region(r: float, amplitude: float, radius=radius, positions=positions) -> np.ndarray:
            """Voxels within ``r`` mm of the centre, the boundary perturbed by smooth noise of ``amplitude``."""
            return radius / r + amplitude * _smooth_field(rng, (7, 7, 7), positions) < 1.0

        sub_parenchyma = parenchyma[box]
        sub_csf = fractions["csf"][box]
        core = region(r_core, 0.18) & (sub_parenchyma > 0.3)
        core |= radius <= 0.5 * r_core  # the centre always belongs to the core
        # oedema spreads further along white matter and does not enter CSF spaces
        noise = _smooth_field(rng, (7, 7, 7), positions)
        oedema = ((radius / r_oedema + 0.2 * noise - 0.15 * fractions["wm"][box]) < 1.0) & (sub_csf < 0.5)
        oedema = (oedema & (sub_parenchyma > 0.2)) | core
        necrosis = np.zeros_like(core)
        if r_necrosis > 0:
            rim = max(1, int(round(2.5 / spacing)))  # the enhancing rim is at least one voxel thick
            necrosis = (region(r_necrosis, 0.15) | (radius <= 0.6 * r_necrosis)) & ndi.binary_erosion(
                core, iterations=rim
            )
        sub = labels[box]
        sub[(oedema & (sub == 0))] = 2
        sub[core & (sub != 1)] = 3
        sub[necrosis] = 1
    lesion = {
        "necrosis": (labels == 1).astype(np.float32),
        "oedema": (labels == 2).astype(np.float32),
        "enhancing": (labels == 3).astype(np.float32),
    }
    if labels.any():
        tumour_box = ndi.find_objects((labels > 0).astype(np.int8))[0]
        pad_box = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(tumour_box, shape))
        for name in lesion:  # partial volume at region borders
            lesion[name][pad_box] = ndi.gaussian_filter(lesion[name][pad_box], 0.5)
    total = lesion["necrosis"] + lesion["oedema"] + lesion["enhancing"]
    keep = np.clip(1.0 - total, 0.0, 1.0)
    inside = (fractions["gm"] + fractions["wm"] + fractions["csf"]) > 0
    for name in ("gm", "wm", "csf"):
        fractions[name] *= keep
    for name, value in lesion.items():
        fractions[name] = value * inside
    return labels, n_tumours


def _add_atrophy(
    fractions: dict[str, np.ndarray],
    ventricle_distance: np.ndarray,
    exterior_distance: np.ndarray,
    hippocampus: np.ndarray,
    severity: float,
    ventricle_base_mm: float,
    cortex_base_mm: float,
) -> None:
    """Atrophy of graded ``severity`` (0..1), in place: tissue turns into CSF.

    Ventricles dilate by ``ventricle_base_mm + 4.5 severity`` mm, cortical grey matter thins by
    ``cortex_base_mm + 1.6 severity`` mm from the CSF side, and hippocampal/medial-temporal grey matter
    loses up to ``65 severity`` percent.
    """
    gm, wm, csf = fractions["gm"], fractions["wm"], fractions["csf"]
    ventricle = np.clip(ventricle_base_mm + 4.5 * severity - ventricle_distance + 0.5, 0.0, 1.0)
    thinning = np.clip(cortex_base_mm + 1.6 * severity - exterior_distance + 0.5, 0.0, 1.0)
    gm_loss = np.clip(np.maximum(ventricle, thinning) + 0.65 * severity * hippocampus, 0.0, 1.0) * gm
    wm_loss = ventricle * wm
    fractions["gm"] = gm - gm_loss
    fractions["wm"] = wm - wm_loss
    fractions["csf"] = csf + gm_loss + wm_loss
