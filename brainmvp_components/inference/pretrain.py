"""Inference with a pre-trained BrainMVP model: encoder features per case, and a masked-reconstruction preview.

The pieces of ``brainmvp_pretrain/configs/inference.json``:

- :class:`EncoderFeatureInferer`: runs the encoder once per modality of a case (pre-training is single-channel)
  and global-average-pools each stage's feature map, giving one feature vector per modality and stage;
- :class:`SaveEncoderFeaturesd`: writes them per case to ``<case>_features.npz`` (atomically);
- :class:`MaskedReconstructionPreviewSaver`: per case, block-masks the volume as pre-training does, fills the
  masked blocks with the distilled template (view A) and with another modality of the case (view B), and saves
  the reconstructions next to the original as ``<case>_reconstruction.png``, with the masked-voxel errors in
  ``<case>_reconstruction.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform
from torch import nn

from brainmvp_components.data.modalities import CANONICAL_MODALITIES
from brainmvp_components.utils.misc import unwrap_module
from brainmvp_components.utils.writers import atomic_write, write_json

__all__ = [
    "FEATURES_SUFFIX",
    "PREVIEW_SUFFIX",
    "EncoderFeatureInferer",
    "SaveEncoderFeaturesd",
    "MaskedReconstructionPreviewSaver",
]

logger = logging.getLogger(__name__)

FEATURES_SUFFIX = "_features.npz"
"""Per-case feature file name: ``<case>_features.npz``."""

PREVIEW_SUFFIX = "_reconstruction"
"""Per-case preview name: ``<case>_reconstruction.png`` and ``<case>_reconstruction.json``."""


def _encoder(network: nn.Module) -> nn.Module:
    module = unwrap_module(network)
    encoder = getattr(module, "encoder", None)
    return encoder if isinstance(encoder, nn.Module) else module


def _case_name(item: Mapping[Hashable, Any], image_key: str = "image") -> str:
    case = item.get("case")
    if not case:
        meta = getattr(item.get(image_key), "meta", {}) or {}
        case = meta.get("case_id")
    if isinstance(case, (list, tuple)):
        case = case[0] if case else None
    if not case:
        raise ValueError("cannot name the output: the item has no 'case' and its image no meta['case_id']")
    return str(case)


class EncoderFeatureInferer(Inferer):
    """Global-average-pooled encoder features of each channel of a multi-modal volume.

    The pre-trained encoder takes one modality at a time, so the ``C`` channels of ``inputs (B, C, H, W, D)``
    are encoded as ``B * C`` single-channel volumes. For each of the encoder's four stages (``x1..x4`` of
    :class:`~brainmvp_components.networks.uniformer.UniFormer3D`, widths ``dims``) the feature map is averaged
    over space.

    Args:
        stages: which stages to pool (1-based, as ``x1..x4``), concatenated in this order.

    Returns (``__call__``):
        ``(B, C, sum of the chosen stage widths)`` float32 features.
    """

    def __init__(self, stages: Sequence[int] = (1, 2, 3, 4)) -> None:
        super().__init__()
        self.stages = tuple(int(s) for s in stages)
        if not self.stages or min(self.stages) < 1:
            raise ValueError(f"stages must be 1-based stage numbers, got {stages}")

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"inputs must be (B, C, H, W, D), got shape {tuple(inputs.shape)}")
        batch, channels = inputs.shape[:2]
        features = _encoder(network)(inputs.reshape(batch * channels, 1, *inputs.shape[2:]))
        if max(self.stages) >= len(features):
            raise ValueError(f"stages {self.stages} asked for, but the encoder returns {len(features) - 1} stages")
        pooled = [features[s].float().mean(dim=tuple(range(2, features[s].ndim))) for s in self.stages]
        return torch.cat(pooled, dim=1).reshape(batch, channels, -1)


class SaveEncoderFeaturesd(MapTransform):
    """Write the pooled features of one case to ``<output_dir>/<case>_features.npz``, atomically.

    The file holds ``features`` ``(C, F)`` float32 (one row per modality, the stages concatenated),
    ``modalities`` (the ``C`` canonical modality names, in row order) and ``stage_widths`` (how ``F`` splits
    into stages), so ``features[i, sum(stage_widths[:s]):sum(stage_widths[:s + 1])]`` is stage ``s + 1`` of
    modality ``modalities[i]``. The path is stored in ``data["features_path"]``.

    Args:
        keys: the features key (``pred``), ``(C, F)`` per case.
        output_dir: the output folder (created when needed).
        stage_widths: the channel widths of the pooled stages, in order.
        modalities_key: key of the channels' modality names (written by ``LoadModalitiesd``).
        image_key: key of the image, whose ``meta["case_id"]`` names the case when the data has no ``case``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        stage_widths: Sequence[int],
        modalities_key: str = "modalities",
        image_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.stage_widths = [int(w) for w in stage_widths]
        self.modalities_key = modalities_key
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            features = torch.as_tensor(d[key]).detach().float().cpu().numpy()
            if features.ndim != 2 or features.shape[1] != sum(self.stage_widths):
                raise ValueError(
                    f"'{key}' must be (modalities, {sum(self.stage_widths)}) for stage widths {self.stage_widths}, "
                    f"got shape {features.shape}"
                )
            modalities = [str(m) for m in d.get(self.modalities_key, [])]
            if len(modalities) != features.shape[0]:
                raise ValueError(f"{features.shape[0]} feature rows but modalities {modalities}")
            path = self.output_dir / f"{_case_name(d, self.image_key)}{FEATURES_SUFFIX}"
            arrays = {
                "features": features,
                "modalities": np.asarray(modalities),
                "stage_widths": np.asarray(self.stage_widths),
            }
            atomic_write(path, lambda tmp, arrays=arrays: _save_npz(tmp, arrays), suffix=".npz")
            d["features_path"] = str(path)
        return d


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


class MaskedReconstructionPreviewSaver:
    """After each case: the pre-training views of its first modality, reconstructed, as a PNG and a JSON.

    The case's volume (the first item of the batch, ``image (C, H, W, D)``, sides divisible by ``block_size`` and 16)
    is block-masked with a seeded mask, as in pre-training; view A fills the masked blocks with the template of
    the modality (cropped at the volume's place in the atlas), view B with the case's next modality (the
    template again when the case has one modality). Both are reconstructed by the pre-training model; the
    middle axial and coronal slices of the original, both views and both reconstructions go to
    ``<output_dir>/<case>_reconstruction.png`` and the masked-voxel mean squared errors (with the error of
    filling with the volume's mean, for scale) to ``<case>_reconstruction.json``; both are written atomically.

    Args:
        output_dir: the output folder.
        mask_ratio: fraction of masked blocks (pre-training: 0.8).
        block_size: block side in voxels (8).
        seed: seed of the masks (the same for every case).
        enabled: ``False`` attaches nothing.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        mask_ratio: float = 0.8,
        block_size: int | Sequence[int] = 8,
        seed: int = 0,
        enabled: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.mask_ratio = float(mask_ratio)
        self.block_size = block_size
        self.seed = int(seed)
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> list[Path]:
        from brainmvp_components.engines.pretrain import compute_pretrain_losses
        from brainmvp_components.visualize.previews import reconstruction_panels, save_reconstruction_preview

        batch = engine.state.batch
        if isinstance(batch, Sequence) and batch:  # MONAI engines decollate the batch into its items
            item, batched = batch[0], False
        else:
            item, batched = batch, True
        if not isinstance(item, Mapping) or "image" not in item:
            return []  # a failed case: nothing to preview
        image = item["image"]
        images = torch.as_tensor(image).as_subclass(torch.Tensor)
        images = (images[:1] if batched else images[None]).to(engine.state.device)
        affine = torch.as_tensor(image.affine)
        affine = affine[:1] if affine.ndim == 3 else affine[None]
        index = torch.as_tensor(item["modality_index"]).long().reshape(1, -1)
        channels = images.shape[1]
        partner = torch.full((1, channels), -1, dtype=torch.long)
        if channels > 1:
            partner[0] = (torch.arange(channels) + 1) % channels
        terms = compute_pretrain_losses(
            engine.network,
            images,
            index,
            partner,
            affine,
            mask_ratio=self.mask_ratio,
            block_size=self.block_size,
            generator=torch.Generator().manual_seed(self.seed),
        )
        case = _case_name({"case": item.get("case"), "image": image})
        target_name = CANONICAL_MODALITIES[int(index[0, 0])]
        fill_b = CANONICAL_MODALITIES[int(index[0, 1])] if channels > 1 else "template"

        def volume(key: str) -> np.ndarray:
            return terms[key][0, 0].float().cpu().numpy()

        panels = reconstruction_panels(volume, target_name, fill_b)
        png = save_reconstruction_preview(
            panels, self.output_dir / f"{case}{PREVIEW_SUFFIX}.png", title=f"{case}: masked reconstruction"
        )
        mask = terms["mask"][0, 0]
        target = terms["target"][0, 0].float()
        errors = {
            "modality": target_name,
            "view_b_fill": fill_b,
            "mask_ratio": self.mask_ratio,
            "mse_template_view": float(((terms["rec_a"][0, 0].float() - target) ** 2)[mask].mean()),
            "mse_cross_modal_view": float(((terms["rec_b"][0, 0].float() - target) ** 2)[mask].mean()),
            "mse_mean_fill": float(((target.mean() - target) ** 2)[mask].mean()),
        }
        report = write_json(self.output_dir / f"{case}{PREVIEW_SUFFIX}.json", errors)
        logger.info(f"{case}: masked-reconstruction preview {png.name}")
        return [png, report]
