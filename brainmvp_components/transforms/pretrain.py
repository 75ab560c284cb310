"""Per-case modality sampling for BrainMVP pre-training.

Pre-training works on single-channel volumes: each case contributes ``K`` target channels (the authors sample
four modalities per case, with replacement when the case has fewer), and every target needs a *partner*, a
co-located channel of a different modality of the same case, whose voxels fill the masked blocks of the
cross-modal reconstruction view. :class:`SampleModalities` picks the targets and their partners once per case,
so the engine can build both views of the whole batch with tensor indexing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends

from brainmvp_components.data.modalities import CANONICAL_MODALITIES

__all__ = ["NO_PARTNER", "SampleModalities", "SampleModalitiesd"]

NO_PARTNER = -1
"""``partner`` value of a target whose case has a single modality (its cross-modal view uses the template)."""


class SampleModalities(Randomizable, Transform):
    """Sample ``num_samples`` channels of a multi-modal case and a cross-modal partner for each.

    The channels are drawn without replacement when the case has at least ``num_samples`` of them. A case with
    fewer channels contributes each of them once and the remaining draws with replacement, so every available
    modality is used. For every sampled channel, ``partner`` is the position (within the ``num_samples`` outputs)
    of a randomly chosen output channel of a *different* modality. When all outputs share one modality (a
    single-modality case, or ``num_samples == 1``) the partner is :data:`NO_PARTNER` (``-1``), and the
    pre-training engine fills that target's cross-modal view with the template of its own modality instead, so
    the view degenerates to the distillation view.

    Args:
        num_samples: ``K``, the number of target channels per case.

    Call arguments:
        img: ``(C, H, W, D)`` image (a ``MetaTensor`` keeps its affine and metadata).
        modality_index: ``(C,)`` indices of the channels' modalities in
            :data:`~brainmvp_components.data.modalities.CANONICAL_MODALITIES`.

    Returns:
        ``(image (K, H, W, D), modality_index LongTensor (K,), partner LongTensor (K,))``.

    Raises:
        ValueError: ``modality_index`` does not have one entry per channel, or the image has no channels.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_samples: int = 4) -> None:
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
        self.num_samples = int(num_samples)
        self._channels: np.ndarray = np.zeros(0, dtype=np.int64)
        self._partner: np.ndarray = np.zeros(0, dtype=np.int64)

    def randomize(self, modality_index: Sequence[int]) -> None:
        modalities = np.asarray(modality_index, dtype=np.int64)
        num_channels = len(modalities)
        if num_channels >= self.num_samples:
            channels = self.R.choice(num_channels, self.num_samples, replace=False)
        else:
            extra = self.R.choice(num_channels, self.num_samples - num_channels, replace=True)
            channels = np.concatenate([self.R.permutation(num_channels), extra])
        sampled = modalities[channels]
        partner = np.full(self.num_samples, NO_PARTNER, dtype=np.int64)
        for k in range(self.num_samples):  # K is a handful: a loop over targets, not voxels
            candidates = np.flatnonzero(sampled != sampled[k])
            if candidates.size:
                partner[k] = self.R.choice(candidates)
        self._channels, self._partner = channels.astype(np.int64), partner

    def __call__(self, img, modality_index, randomize: bool = True):
        index = torch.as_tensor(np.asarray(modality_index), dtype=torch.long).reshape(-1)
        if img.shape[0] < 1:
            raise ValueError("the image has no channels to sample modalities from")
        if index.numel() != img.shape[0]:
            raise ValueError(
                f"modality_index has {index.numel()} entries but the image has {img.shape[0]} channels; "
                "expected one modality per channel"
            )
        if index.min() < 0 or index.max() >= len(CANONICAL_MODALITIES):
            raise ValueError(
                f"modality_index values must lie in [0, {len(CANONICAL_MODALITIES)}), got {index.tolist()}"
            )
        if randomize:
            self.randomize(index.tolist())
        channels = self._channels
        if isinstance(img, torch.Tensor):
            out = img[torch.as_tensor(channels, device=img.device)]
        else:
            out = np.asarray(img)[channels]
        return out, index[torch.as_tensor(channels)], torch.as_tensor(self._partner, dtype=torch.long)


class SampleModalitiesd(Randomizable, MapTransform):
    """Dictionary-based :class:`SampleModalities`.

    Reads the image at ``keys`` and its channels' modalities at ``modality_index_key`` (as written by
    :class:`~brainmvp_components.transforms.io.LoadModalitiesd`), and writes the ``K`` sampled channels back to
    the image key, their modality indices to ``modality_index_key``, their partners to ``partner_key`` and, when
    the data holds ``modalities_key``, their canonical names there (so cases with different modality counts
    collate into one batch).

    Args:
        keys: the image key (one key).
        num_samples: ``K``, target channels per case.
        modality_index_key: key of the ``(C,)`` canonical modality indices.
        partner_key: key written with the ``(K,)`` partner positions (``-1``: no partner, template fallback).
        modalities_key: key of the channels' names, rewritten to the sampled names when present.
        allow_missing_keys: don't raise when the image key is absent.
    """

    backend = SampleModalities.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        num_samples: int = 4,
        modality_index_key: str = "modality_index",
        partner_key: str = "partner",
        modalities_key: str = "modalities",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SampleModalitiesd samples one image key, got {self.keys}")
        self.sampler = SampleModalities(num_samples=num_samples)
        self.modality_index_key = modality_index_key
        self.partner_key = partner_key
        self.modalities_key = modalities_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.sampler.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.modality_index_key not in d:
                raise KeyError(
                    f"SampleModalitiesd needs the channels' modality indices under {self.modality_index_key!r} "
                    "(written by LoadModalitiesd)"
                )
            image, index, partner = self.sampler(d[key], d[self.modality_index_key])
            d[key] = image
            d[self.modality_index_key] = index
            d[self.partner_key] = partner
            if self.modalities_key in d:
                d[self.modalities_key] = [CANONICAL_MODALITIES[i] for i in index.tolist()]
        return d
