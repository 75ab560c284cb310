"""What pre-training learned, measured: template fidelity and cross-modal reconstruction on held-out crops.

Two figures tell whether a BrainMVP pre-training run learned anything beyond the mean intensity:

- :func:`template_correlations`: for each modality, the Pearson correlation inside the brain between the distilled
  template and the voxel-wise mean of that modality over a cohort, both on the template grid. Templates that are
  still noise score near 0; templates that became "recognisable brain structures" approach the cohort mean.
- :func:`reconstruction_mse_ratio`: on crops the network has not trained on, the mean squared error of the
  cross-modal reconstruction over the masked voxels, divided by that of filling those voxels with the crop's mean
  intensity. 1 means the network learned no more than the mean; lower is better.

:func:`evaluate_pretraining` runs both and writes them to a JSON report (the pre-training bundle's
``evaluate.json``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import LoadImage, Orientation, ScaleIntensityRangePercentiles, SpatialResample
from torch import nn

from brainmvp_components.data.modalities import canonical_modality
from brainmvp_components.engines.pretrain import compute_pretrain_losses
from brainmvp_components.utils.misc import unwrap_module
from brainmvp_components.utils.writers import write_json

__all__ = [
    "cohort_mean_images",
    "evaluate_pretraining",
    "pearson_r",
    "reconstruction_mse_ratio",
    "template_correlations",
]

logger = logging.getLogger(__name__)


def pearson_r(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two arrays of one shape, over ``mask`` (all voxels by default); ``nan`` when either
    is constant there."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"arrays differ in shape: {a.shape} and {b.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the arrays' {a.shape}")
        a, b = a[mask], b[mask]
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def cohort_mean_images(
    cases: Iterable[Mapping[str, Any]],
    affine: np.ndarray | torch.Tensor,
    shape: Sequence[int],
    modalities: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Voxel-wise mean of each modality over the cases, on the grid ``(affine, shape)``.

    Each image is read, oriented to RAS, scaled by its 5th/95th percentiles to [0, 1] with clipping (as
    pre-training sees it) and resampled trilinearly onto the grid (zero outside the image).

    Args:
        cases: datalist entries with ``image`` (paths) and ``modalities`` (their names).
        affine: ``(4, 4)`` voxel-to-world affine of the target grid (the templates').
        shape: spatial shape of the target grid.
        modalities: modalities to average (canonical names or aliases); cases without one are skipped for it.

    Returns:
        ``({modality: float32 (H, W, D) mean}, {modality: number of cases averaged})``; modalities no case has
        are left out.
    """
    wanted = [canonical_modality(m) for m in modalities]
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    orient = Orientation(axcodes="RAS")
    scale = ScaleIntensityRangePercentiles(lower=5, upper=95, b_min=0.0, b_max=1.0, clip=True)
    resample = SpatialResample(mode="bilinear", padding_mode="zeros")
    target_affine = torch.as_tensor(np.asarray(affine), dtype=torch.float64)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for case in cases:
        names = [canonical_modality(m) for m in case["modalities"]]
        for path, name in zip(case["image"], names):
            if name not in wanted:
                continue
            volume = scale(orient(loader(path)))
            on_grid = resample(volume, dst_affine=target_affine, spatial_size=tuple(int(s) for s in shape))
            array = np.asarray(torch.as_tensor(on_grid)[0], dtype=np.float64)
            sums[name] = sums.get(name, 0.0) + array
            counts[name] = counts.get(name, 0) + 1
    return {name: (sums[name] / counts[name]).astype(np.float32) for name in sums}, counts


def template_correlations(
    templates: Any,
    cases: Sequence[Mapping[str, Any]],
    modalities: Sequence[str] | None = None,
    brain_threshold: float = 0.05,
) -> dict[str, float]:
    """Pearson ``r`` inside the brain between each template and the cohort mean of its modality.

    Args:
        templates: a :class:`~brainmvp_components.networks.templates.ModalityTemplates` (or a folder of exported
        templates).
        cases: datalist entries of the cohort (``image``, ``modalities``).
        modalities: which templates to score; default every template that some case has.
        brain_threshold: the brain is where the cohort mean of the modality exceeds this (images in [0, 1]).

    Returns:
        ``{modality: r}`` in the templates' order.
    """
    from brainmvp_components.networks.templates import ModalityTemplates

    if isinstance(templates, (str, os.PathLike)):
        templates = ModalityTemplates.from_nifti_dir(templates)
    names = list(templates.modalities) if modalities is None else [canonical_modality(m) for m in modalities]
    affine = templates.affine.detach().cpu().numpy()
    means, counts = cohort_mean_images(cases, affine, templates.spatial_shape, names)
    arrays = templates.as_arrays()
    scores = {}
    for name in names:
        if name not in means:
            continue
        brain = means[name] > brain_threshold
        scores[name] = pearson_r(arrays[name], means[name], brain)
        logger.info("template %s: r = %.3f against the mean of %d case(s)", name, scores[name], counts[name])
    return scores


@torch.no_grad()
def reconstruction_mse_ratio(
    network: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    mask_ratio: float = 0.8,
    block_size: int | Sequence[int] = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    repeats: int = 1,
) -> dict[str, Any]:
    """Cross-modal reconstruction error on the masked voxels, relative to filling them with the crop's mean.

    Every target crop of every batch is block-masked (a seeded mask) and its masked
    blocks filled with its partner modality (view B of pre-training; targets without a partner fall back to the
    template fill, as in training). The reconstruction's squared error over the masked voxels is summed over all
    crops and divided by the squared error of the crop's mean intensity over the same voxels.

    Args:
        network: the pre-training model (``BrainMVPPretrainModel``), in any wrapper.
        batches: collated pre-training batches (``image``, ``modality_index``, ``partner``), such as the
            pre-training data loader over held-out cases; an iterable that can be iterated ``repeats`` times.
        mask_ratio: fraction of masked blocks.
        block_size: block side in voxels.
        seed: seed of the masks.
        device: where the network runs.
        repeats: passes over ``batches``; a data loader with random crops yields new crops on every pass.

    Returns:
        ``{"ratio", "mse", "mean_fill_mse", "crops"}``; ``ratio`` is ``nan`` when no voxel was masked.
    """
    generator = torch.Generator().manual_seed(int(seed))
    module = unwrap_module(network)
    was_training = module.training
    module.eval()
    error = baseline = 0.0
    voxels = crops = 0
    try:
        for batch in (batch for _ in range(int(repeats)) for batch in batches):
            image = batch["image"]
            if not hasattr(image, "affine"):
                raise TypeError(
                    "batch['image'] must be a MetaTensor whose affine places each crop in world space (the template "
                    f"fill of targets without a partner is cropped there), got {type(image).__name__}"
                )
            images = torch.as_tensor(image).as_subclass(torch.Tensor).to(device)
            affine = torch.as_tensor(image.affine)
            if affine.ndim == 2:
                affine = affine.expand(images.shape[0], 4, 4)
            terms = compute_pretrain_losses(
                network,
                images,
                batch["modality_index"],
                batch["partner"],
                affine,
                mask_ratio=mask_ratio,
                block_size=block_size,
                generator=generator,
            )
            target, mask, rec = terms["target"].float(), terms["mask"], terms["rec_b"].float()
            crop_mean = target.mean(dim=(1, 2, 3, 4), keepdim=True)
            error += float(((rec - target) ** 2)[mask].sum())
            baseline += float(((crop_mean.expand_as(target) - target) ** 2)[mask].sum())
            voxels += int(mask.sum())
            crops += target.shape[0]
    finally:
        module.train(was_training)
    ratio = error / baseline if baseline > 0 else float("nan")
    return {
        "ratio": ratio,
        "mse": error / max(voxels, 1),
        "mean_fill_mse": baseline / max(voxels, 1),
        "crops": crops,
    }


def evaluate_pretraining(
    network: nn.Module,
    held_out_batches: Iterable[Mapping[str, Any]],
    cohort_cases: Sequence[Mapping[str, Any]],
    output_path: str | os.PathLike,
    mask_ratio: float = 0.8,
    block_size: int | Sequence[int] = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    repeats: int = 2,
) -> dict[str, Any]:
    """Score a pre-training run and write the report (JSON, written atomically).

    Args:
        network: the trained pre-training model (its templates are scored).
        held_out_batches: pre-training batches of cases the run did not train on.
        cohort_cases: the pre-training cohort's datalist entries (the templates' reference means).
        output_path: where the JSON report goes.
        mask_ratio, block_size, seed, device, repeats: see :func:`reconstruction_mse_ratio`.

    Returns:
        ``{"reconstruction_mse_ratio", "reconstruction", "templates_r"}`` as written.
    """
    reconstruction = reconstruction_mse_ratio(
        network, held_out_batches, mask_ratio, block_size, seed=seed, device=device, repeats=repeats
    )
    if reconstruction["crops"] == 0:
        raise ValueError("no held-out crops to evaluate the reconstruction on: the evaluation split is empty")
    correlations = template_correlations(unwrap_module(network).templates, cohort_cases)
    report = {
        "reconstruction_mse_ratio": reconstruction["ratio"],
        "reconstruction": reconstruction,
        # a template that never trained (its modality was never sampled) is constant: r is undefined, null in JSON
        "templates_r": {m: (r if math.isfinite(r) else None) for m, r in correlations.items()},
    }
    write_json(Path(output_path), report)
    logger.info(
        "reconstruction MSE ratio %.3f over %d held-out crops; template r %s",
        reconstruction["ratio"],
        reconstruction["crops"],
        ", ".join(f"{k} {v:.2f}" for k, v in correlations.items()),  # nan shows as nan
    )
    return report
