"""Distilled modality templates used as data during fine-tuning.

Uses of the frozen templates that pre-training distils (one volume per modality on the atlas grid):

- :class:`RandTemplateReplace` / :class:`RandTemplateReplaced` (training augmentation, the paper's "template
  augmentation"): replace a random subset of input channels by their modality's template, resampled at the
  sample's physical location. The dictionary version can also write a second, independently augmented copy
  (``image_pair``) for the paired-consistency loss of :class:`~brainmvp_components.engines.consistency.
  ConsistencyTrainer`. Apply it after the random crop so that only the crop is resampled.
- missing-modality imputation at inference (:mod:`brainmvp_components.transforms.impute`) builds on
  :func:`load_frozen_templates` and :func:`foreground_of` from here.

Both take the templates as a :class:`~brainmvp_components.networks.templates.ModalityTemplates`, or a directory of
``template_<modality>.nii.gz`` files (the pre-training bundle's ``models/templates``); see
:func:`load_frozen_templates`.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends

from brainmvp_components.data.modalities import canonical_modalities, canonical_modality

__all__ = [
    "load_frozen_templates",
    "foreground_of",
    "FOREGROUND_THRESHOLD",
    "RandTemplateReplace",
    "RandTemplateReplaced",
]

logger = logging.getLogger(__name__)


def load_frozen_templates(templates, required: Sequence[str] | None = None, purpose: str = "template augmentation"):
    """Return frozen :class:`~brainmvp_components.networks.templates.ModalityTemplates`, or ``None`` with a warning.

    Args:
        templates: a ``ModalityTemplates`` instance, a directory holding ``template_<modality>.nii.gz`` files
            (or a ``templates`` sub-directory holding them, as a converted official checkpoint has), or ``None``.
        required: modalities the caller needs; a loaded set lacking one of them is an error naming it.
        purpose: what the templates are for, used in the warning when none are available.

    Returns:
        the templates with gradients disabled, or ``None`` when ``templates`` is ``None`` or a missing directory.
    """
    from brainmvp_components.networks.templates import ModalityTemplates

    if templates is None or isinstance(templates, ModalityTemplates):
        loaded = templates
    else:
        folder = Path(templates)
        if (folder / "templates").is_dir() and not any(folder.glob("template_*.nii*")):
            folder = folder / "templates"
        if not folder.is_dir() or not any(folder.glob("template_*.nii*")):
            logger.warning(f"no modality templates found in {str(folder)!r}: {purpose} is off")
            return None
        loaded = ModalityTemplates.from_nifti_dir(folder)
        logger.info(f"loaded frozen modality templates {list(loaded.modalities)} from {str(folder)!r}")
    if loaded is None:
        logger.warning(f"no modality templates given: {purpose} is off")
        return None
    loaded.requires_grad_(False)
    loaded.eval()
    missing = [m for m in canonical_modalities(required or []) if m not in loaded.modalities]
    if missing:
        raise ValueError(f"the modality templates hold {list(loaded.modalities)}, not the required {missing}")
    return loaded


def image_affine(img: torch.Tensor) -> torch.Tensor:
    if not isinstance(img, MetaTensor):
        raise TypeError("template resampling needs a MetaTensor whose affine gives the sample's physical location")
    return torch.as_tensor(img.affine, dtype=torch.float64).reshape(4, 4)


FOREGROUND_THRESHOLD = 0.05
"""Intensity above which a voxel of a percentile-scaled image (5th/95th percentiles to [0, 1]) holds anatomy."""


def foreground_of(img: torch.Tensor, channels: Sequence[int], threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """Where any of ``channels`` of ``img (C, *spatial)`` exceeds ``threshold``: ``BoolTensor (*spatial)``.

    Templates are confined to this mask of the real channels: outside the head an image is background (zero),
    whatever the template learned there, and a replaced channel must not outline a brain where the case has none.
    """
    if not channels:
        return torch.zeros(img.shape[1:], dtype=torch.bool, device=img.device)
    real = torch.as_tensor(img).as_subclass(torch.Tensor)[list(channels)]
    return real.amax(dim=0) > threshold


@torch.no_grad()
def _template_channel(templates, modality: str, img: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """The template of ``modality`` on the grid of ``img`` (C, *spatial), zero outside ``foreground``, shape
    ``spatial``, ``img``'s dtype."""
    volume = templates.resample_to_grid(modality, image_affine(img), tuple(img.shape[1:]))
    volume = torch.as_tensor(volume).reshape(img.shape[1:]).to(device=img.device, dtype=img.dtype)
    return volume * foreground.to(volume.device)


def _channel_chances(
    modalities: Sequence[str], replace_weights: Mapping[str, float] | None
) -> tuple[np.ndarray | None, int]:
    """``(chances, replaceable)`` from ``{modality: weight}`` (unnamed modalities weigh 1): each channel's
    probability of being drawn, ``None`` when all are equal (the draw the paper's recipe always made), and how many
    channels may be replaced at all."""
    weights = {canonical_modality(name): float(w) for name, w in (replace_weights or {}).items()}
    unknown = sorted(set(weights) - set(modalities))
    if unknown:
        raise ValueError(
            f"replace_weights names {unknown}, which are not among the input modalities {list(modalities)}"
        )
    bad = {name: w for name, w in weights.items() if not (w >= 0.0 and np.isfinite(w))}
    if bad:
        raise ValueError(f"replace_weights must be finite and >= 0, got {bad}")
    channel_weights = np.array([weights.get(name, 1.0) for name in modalities], dtype=np.float64)
    if modalities and channel_weights.sum() <= 0:
        raise ValueError("replace_weights leave no modality to replace (every weight is 0)")
    equal = channel_weights.size == 0 or bool(np.all(channel_weights == channel_weights[0]))
    return (None if equal else channel_weights / channel_weights.sum()), int(np.count_nonzero(channel_weights))


class RandTemplateReplace(Randomizable, Transform):
    """Replace a random subset of input channels by their modality's frozen template.

    Per call, ``k`` is drawn uniformly from ``0 .. min(max_replace, C - 1)`` (so at least one real channel
    always remains) and ``k`` distinct channels are chosen uniformly; each is overwritten by its template
    resampled at the physical voxel centres of the input (its affine), scaled to [0, 1] by the template's fixed
    intensity window (:meth:`~brainmvp_components.networks.templates.ModalityTemplates.resample_rows`) and set to zero
    outside the foreground of the channels that stay real (:func:`foreground_of`), as a percentile-scaled image
    is. Apply it before intensity augmentation, which may shift the background away from zero.

    Args:
        templates: see :func:`load_frozen_templates`; ``None`` or a directory without templates makes the
            transform an identity (with a warning), so a bundle still trains without pre-training outputs.
        modalities: the modality of each input channel, in channel order (any alias).
        max_replace: the largest number of channels replaced in one call (the paper uses 3).
        prob: probability of augmenting at all in one call.
        replace_weights: relative chance of each modality being one of the replaced channels, by modality name
            (any alias); modalities not named weigh 1, and 0 never replaces a modality. The default (equal
            chances) is the paper's. Weighting the modality a site most often lacks (FLAIR, say) teaches the
            network to segment with that channel imputed without replacing the others more often.

    Input: ``MetaTensor (C, H, W, D)``. Output: a new tensor of the same shape and meta data; the indices of
    the replaced channels of the last call are in :attr:`replaced`.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        templates,
        modalities: Sequence[str],
        max_replace: int = 3,
        prob: float = 1.0,
        replace_weights: Mapping[str, float] | None = None,
    ) -> None:
        if max_replace < 0:
            raise ValueError(f"max_replace must be >= 0, got {max_replace}")
        self.modalities = canonical_modalities(modalities)
        self.replace_chances, self.replaceable = _channel_chances(self.modalities, replace_weights)
        self.templates = load_frozen_templates(templates, required=self.modalities)
        self.max_replace = int(max_replace)
        self.prob = float(prob)
        self.replaced: list[int] = []

    def randomize(self, num_channels: int) -> None:
        self.replaced = []
        if self.templates is None or self.R.rand() >= self.prob:
            return
        k_max = min(self.max_replace, num_channels - 1, self.replaceable)
        k = int(self.R.randint(0, k_max + 1)) if k_max > 0 else 0
        self.replaced = sorted(
            int(i) for i in self.R.choice(num_channels, size=k, replace=False, p=self.replace_chances)
        )

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if img.shape[0] != len(self.modalities):
            raise ValueError(f"input has {img.shape[0]} channels but modalities name {len(self.modalities)}")
        if randomize:
            self.randomize(img.shape[0])
        out = img.clone()
        if self.replaced:
            kept = [c for c in range(img.shape[0]) if c not in self.replaced]
            foreground = foreground_of(img, kept)
            for c in self.replaced:
                out[c] = _template_channel(self.templates, self.modalities[c], img, foreground)
        return out


class RandTemplateReplaced(Randomizable, MapTransform):
    """Dictionary version of :class:`RandTemplateReplace`, optionally writing an independent second copy.

    Args:
        keys: the image key(s) to augment.
        templates, modalities, max_replace, prob, replace_weights: as :class:`RandTemplateReplace`.
        pair_key: when given, a second copy of the first key, with its own independent draw, is written to
            ``data[pair_key]`` (the "pair augmentation" of the paper) before the first copy is augmented.
        replaced_key: when given, the replaced channel indices of each copy go to ``data[replaced_key]``
            (and ``data[pair_key + "_" + replaced_key]``), as ``LongTensor``s; useful for tests and logging.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = RandTemplateReplace.backend

    def __init__(
        self,
        keys: KeysCollection,
        templates,
        modalities: Sequence[str],
        max_replace: int = 3,
        prob: float = 1.0,
        replace_weights: Mapping[str, float] | None = None,
        pair_key: str | None = None,
        replaced_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.replacer = RandTemplateReplace(
            templates, modalities, max_replace=max_replace, prob=prob, replace_weights=replace_weights
        )
        self.pair_key = pair_key
        self.replaced_key = replaced_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.replacer.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        """Draws happen per copy in :meth:`__call__`."""

    def _apply(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.replacer(img)
        return out, torch.as_tensor(self.replacer.replaced, dtype=torch.long)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if self.pair_key is not None and keys:
            d[self.pair_key], replaced = self._apply(d[keys[0]])
            if self.replaced_key is not None:
                d[f"{self.pair_key}_{self.replaced_key}"] = replaced
        for key in keys:
            d[key], replaced = self._apply(d[key])
            if self.replaced_key is not None:
                d[self.replaced_key] = replaced
        return d
