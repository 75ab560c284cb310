"""Template-filled block augmentation for single-modality input.

BrainMVP fine-tunes multi-channel networks with template augmentation: a random subset of the input channels
is replaced by the distilled template of its modality (:mod:`brainmvp_components.transforms.templates`). With
one input channel (T1-only ADNI classification, for instance) that would erase the only image. This project
instead replaces a random fraction of the image's ``8 x 8 x 8`` blocks by the co-located blocks of the
template, the way pre-training builds its distillation view: the template is resampled to the sample's own
voxel grid through its affine, so each filled block shows the template's anatomy at that physical place.
Two independently filled copies of one input, with the consistency loss between their features, play the part
of the paper's pair augmentation.

This is a departure from the paper (which describes channel replacement only); it is described in the
classification bundle's README.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type

from brainmvp_components.networks.templates import ModalityTemplates
from brainmvp_components.transforms.masking import fill_masked, random_block_mask
from brainmvp_components.transforms.templates import foreground_of, load_frozen_templates

__all__ = ["RandTemplateBlockFill", "RandTemplateBlockFilld"]


class RandTemplateBlockFill(RandomizableTransform):
    """Fill a random fraction of an image's blocks with the co-located template of each channel's modality.

    With probability ``prob``, each channel of ``img (C, H, W, D)`` gets its own random block mask (exactly
    ``N - floor(N (1 - r))`` of its ``N`` blocks, :func:`~brainmvp_components.transforms.masking.random_block_mask`),
    and
    its masked voxels are replaced by the template of the channel's modality resampled on the image's grid
    (:meth:`~brainmvp_components.networks.templates.ModalityTemplates.resample_rows`, in [0, 1] like the
    percentile-scaled
    images, zero outside the image's foreground). Other voxels are untouched. Sides that are not multiples of the block
    size end in partial blocks.

    Args:
        templates: :class:`~brainmvp_components.networks.templates.ModalityTemplates`, or the folder of the pre-training
            bundle's ``template_<modality>.nii.gz`` files (see
            :func:`~brainmvp_components.transforms.templates.load_frozen_templates`). ``None`` or a folder without
            templates makes the transform an identity, with a warning, so a bundle still trains without
            pre-training outputs.
        modalities: modalities that must have a template (the model's input modalities); checked when loading.
        prob: probability of filling any blocks at all.
        mask_ratio: fraction ``r`` of blocks filled, or a ``(low, high)`` range it is drawn from uniformly each call.
        block_size: block side in voxels (one int or one per axis).

    Call arguments:
        img: ``(C, H, W, D)`` tensor; a ``MetaTensor`` supplies its affine (after every spatial transform).
        modality_index: ``(C,)`` canonical modality indices of the channels (as ``LoadModalitiesd`` writes them).
        affine: the ``(4, 4)`` voxel-to-world affine when ``img`` is not a ``MetaTensor``.

    Returns:
        The filled image, same type, shape and metadata as ``img``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        templates: ModalityTemplates | str | os.PathLike | None,
        modalities: Sequence[str] | None = None,
        prob: float = 1.0,
        mask_ratio: float | Sequence[float] = (0.0, 0.5),
        block_size: int | Sequence[int] = 8,
    ) -> None:
        super().__init__(prob)
        ratio = (float(mask_ratio),) * 2 if isinstance(mask_ratio, (int, float)) else tuple(map(float, mask_ratio))
        if len(ratio) != 2 or not 0.0 <= ratio[0] <= ratio[1] <= 1.0:
            raise ValueError(f"mask_ratio must be a fraction or a (low, high) range within [0, 1], got {mask_ratio}")
        self.mask_ratio = ratio
        self.block_size = (int(block_size),) * 3 if isinstance(block_size, int) else tuple(map(int, block_size))
        self.templates = load_frozen_templates(templates, required=modalities, purpose="template block filling")
        self._ratio = ratio[0]
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._do_transform = self._do_transform and self.templates is not None
        if self._do_transform:
            self._ratio = float(self.R.uniform(*self.mask_ratio))
            self._seed = int(self.R.randint(0, 2**31 - 1))

    def block_mask(self, num_channels: int, spatial_shape: Sequence[int], device=None) -> torch.Tensor:
        """The mask of the last :meth:`randomize`: ``BoolTensor (C, H, W, D)``, ``True`` where the template goes."""
        padded = [math.ceil(s / b) * b for s, b in zip(spatial_shape, self.block_size)]
        generator = torch.Generator().manual_seed(self._seed)
        mask = random_block_mask(num_channels, padded, self.block_size, self._ratio, generator=generator)
        h, w, d = spatial_shape
        return mask[:, 0, :h, :w, :d].to(device)

    def __call__(self, img, modality_index, affine=None, randomize: bool = True):
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        if img.ndim != 4:
            raise ValueError(f"expected a channel-first 3-D image (C, H, W, D), got shape {tuple(img.shape)}")
        index = torch.as_tensor(np.asarray(modality_index), dtype=torch.long).reshape(-1)
        if index.numel() != img.shape[0]:
            raise ValueError(f"modality_index has {index.numel()} entries for an image of {img.shape[0]} channel(s)")
        if affine is None:
            if not isinstance(img, MetaTensor):
                raise ValueError("the image's affine is needed: pass a MetaTensor or `affine`")
            affine = img.affine
        x = torch.as_tensor(img).as_subclass(torch.Tensor)
        fill = self.templates.resample_rows(self.templates.indices_for(index), affine, x.shape[1:])
        fill = fill * foreground_of(x, range(x.shape[0]))
        mask = self.block_mask(x.shape[0], x.shape[1:], device=x.device)
        out = fill_masked(x[None], mask[None], fill.to(x.device)[None])[0]
        return convert_to_dst_type(out, img)[0]


class RandTemplateBlockFilld(Randomizable, MapTransform):
    """Dictionary-based :class:`RandTemplateBlockFill`, optionally writing a second independent copy.

    Args:
        keys: the image key (one key).
        templates, modalities: as :class:`RandTemplateBlockFill`.
        prob: probability of filling blocks, drawn independently for each copy.
        mask_ratio: fraction of blocks filled, or a ``(low, high)`` range drawn from per copy.
        block_size: block side in voxels.
        pair_key: when set (and templates are available), a second copy of the *input* image, filled with an
            independent random mask, is written there (``"image_pair"``, which
            :class:`~brainmvp_components.engines.consistency.ConsistencyTrainer` reads).
        modality_index_key: key of the ``(C,)`` canonical modality indices of the channels.
        allow_missing_keys: don't raise when the image key is absent.
    """

    backend = RandTemplateBlockFill.backend

    def __init__(
        self,
        keys: KeysCollection,
        templates: ModalityTemplates | str | os.PathLike | None,
        modalities: Sequence[str] | None = None,
        prob: float = 1.0,
        mask_ratio: float | Sequence[float] = (0.0, 0.5),
        block_size: int | Sequence[int] = 8,
        pair_key: str | None = None,
        modality_index_key: str = "modality_index",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandTemplateBlockFilld fills one image key, got {self.keys}")
        self.filler = RandTemplateBlockFill(
            templates, modalities=modalities, prob=prob, mask_ratio=mask_ratio, block_size=block_size
        )
        self.pair_key = pair_key
        self.modality_index_key = modality_index_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.filler.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.filler.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.modality_index_key not in d:
                raise KeyError(
                    f"RandTemplateBlockFilld needs the channels' modality indices under {self.modality_index_key!r} "
                    "(written by LoadModalitiesd)"
                )
            image, index = d[key], d[self.modality_index_key]
            try:
                if self.pair_key is not None and self.filler.templates is not None:
                    pair = self.filler(image, index)
                    d[self.pair_key] = pair.clone() if pair is image else pair
                d[key] = self.filler(image, index)
            except ValueError as err:  # unknown modality, channel count: name the case
                raise type(err)(f"case {d.get('case', '?')!r}: {err}") from err
        return d
