"""Distilled modality templates used as data during fine-tuning and inference.

Two uses of the frozen templates that pre-training distils (one volume per modality on the atlas grid):

- :class:`RandTemplateReplace` / :class:`RandTemplateReplaced` (training augmentation, the paper's "template
  augmentation"): replace a random subset of input channels by their modality's template, resampled at the
  sample's physical location. The dictionary version can also write a second, independently augmented copy
  (``image_pair``) for the paired-consistency loss of :class:`~brainmvp_components.engines.consistency.
  ConsistencyTrainer`. Apply it after the random crop so that only the crop is resampled.
- :class:`ImputeMissingModalities` / :class:`ImputeMissingModalitiesd` (inference): fill the channels of
  modalities a case lacks (listed by :class:`~brainmvp_components.transforms.io.LoadModalitiesd` in
  ``data["missing_modalities"]``) with their templates resampled to the case grid;
  :class:`SaveModalityRecordd` then records next to each saved prediction which modalities were imputed.

Both take the templates as a :class:`~brainmvp_components.templates.ModalityTemplates`, or a directory of
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

from brainmvp_components.modalities import canonical_modalities, canonical_modality

__all__ = [
    "load_frozen_templates",
    "RandTemplateReplace",
    "RandTemplateReplaced",
    "ImputeMissingModalities",
    "ImputeMissingModalitiesd",
    "MissingModalitiesError",
    "SaveModalityRecordd",
]

logger = logging.getLogger(__name__)


class MissingModalitiesError(ValueError):
    """A case holds none of the modalities the model needs."""


def load_frozen_templates(templates, required: Sequence[str] | None = None, purpose: str = "template augmentation"):
    """Return frozen :class:`~brainmvp_components.templates.ModalityTemplates`, or ``None`` with a warning.

    Args:
        templates: a ``ModalityTemplates`` instance, a directory holding ``template_<modality>.nii.gz`` files
            (or a ``templates`` sub-directory holding them, as a converted official checkpoint has), or ``None``.
        required: modalities the caller needs; a loaded set lacking one of them is an error naming it.
        purpose: what the templates are for, used in the warning when none are available.

    Returns:
        the templates with gradients disabled, or ``None`` when ``templates`` is ``None`` or a missing directory.
    """
    from brainmvp_components.templates import ModalityTemplates

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


def _affine_of(img: torch.Tensor) -> torch.Tensor:
    if not isinstance(img, MetaTensor):
        raise TypeError("template resampling needs a MetaTensor whose affine gives the sample's physical location")
    return torch.as_tensor(img.affine, dtype=torch.float64).reshape(4, 4)


@torch.no_grad()
def _template_channel(templates, modality: str, img: torch.Tensor) -> torch.Tensor:
    """The template of ``modality`` on the grid of ``img`` (C, *spatial), shape ``spatial``, ``img``'s dtype."""
    volume = templates.resample_to_grid(modality, _affine_of(img), tuple(img.shape[1:]))
    return torch.as_tensor(volume).reshape(img.shape[1:]).to(device=img.device, dtype=img.dtype)


class RandTemplateReplace(Randomizable, Transform):
    """Replace a random subset of input channels by their modality's frozen template.

    Per call, ``k`` is drawn uniformly from ``0 .. min(max_replace, C - 1)`` (so at least one real channel
    always remains) and ``k`` distinct channels are chosen uniformly; each is overwritten by its template
    resampled at the physical voxel centres of the input (its affine) and min-max normalised to [0, 1].

    Args:
        templates: see :func:`load_frozen_templates`; ``None`` or a directory without templates makes the
            transform an identity (with a warning), so a bundle still trains without pre-training outputs.
        modalities: the modality of each input channel, in channel order (any alias).
        max_replace: the largest number of channels replaced in one call (the paper uses 3).
        prob: probability of augmenting at all in one call.

    Input: ``MetaTensor (C, H, W, D)``. Output: a new tensor of the same shape and meta data; the indices of
    the replaced channels of the last call are in :attr:`replaced`.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, templates, modalities: Sequence[str], max_replace: int = 3, prob: float = 1.0) -> None:
        if max_replace < 0:
            raise ValueError(f"max_replace must be >= 0, got {max_replace}")
        self.modalities = canonical_modalities(modalities)
        self.templates = load_frozen_templates(templates, required=self.modalities)
        self.max_replace = int(max_replace)
        self.prob = float(prob)
        self.replaced: list[int] = []

    def randomize(self, num_channels: int) -> None:
        self.replaced = []
        if self.templates is None or self.R.rand() >= self.prob:
            return
        k_max = min(self.max_replace, num_channels - 1)
        k = int(self.R.randint(0, k_max + 1)) if k_max > 0 else 0
        self.replaced = sorted(int(i) for i in self.R.choice(num_channels, size=k, replace=False))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if img.shape[0] != len(self.modalities):
            raise ValueError(f"input has {img.shape[0]} channels but modalities name {len(self.modalities)}")
        if randomize:
            self.randomize(img.shape[0])
        out = img.clone()
        for c in self.replaced:
            out[c] = _template_channel(self.templates, self.modalities[c], img)
        return out


class RandTemplateReplaced(Randomizable, MapTransform):
    """Dictionary version of :class:`RandTemplateReplace`, optionally writing an independent second copy.

    Args:
        keys: the image key(s) to augment.
        templates, modalities, max_replace, prob: as :class:`RandTemplateReplace`.
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
        pair_key: str | None = None,
        replaced_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.replacer = RandTemplateReplace(templates, modalities, max_replace=max_replace, prob=prob)
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


class ImputeMissingModalities(Transform):
    """Fill the channels of missing modalities with their frozen templates resampled to the case grid.

    Args:
        templates: see :func:`load_frozen_templates`. Without templates, missing channels stay zero and a
            warning says so.
        modalities: the modality of each input channel, in channel order (the model's input order).

    ``__call__(img, missing, case=None)``: ``img`` is a ``MetaTensor (C, H, W, D)`` whose channels for the
    modalities in ``missing`` are placeholders; returns a copy with those channels replaced and
    ``meta["imputed_modalities"]`` listing what was filled. Raises :class:`MissingModalitiesError` naming
    ``case`` when every channel is missing. ``meta["missing_modalities"]`` lists the placeholders (imputed
    or, without templates, left zero), comma-separated like ``imputed_modalities``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, templates, modalities: Sequence[str]) -> None:
        self.modalities = canonical_modalities(modalities)
        self.templates = load_frozen_templates(templates, required=self.modalities, purpose="template imputation")

    def __call__(self, img: torch.Tensor, missing: Sequence[str] = (), case: str | None = None) -> torch.Tensor:
        missing = [canonical_modality(m) for m in missing]
        name = case or "the case"
        unknown = [m for m in missing if m not in self.modalities]
        if unknown:
            raise ValueError(f"{name}: missing modalities {unknown} are not model inputs {self.modalities}")
        if img.shape[0] != len(self.modalities):
            raise ValueError(f"{name}: image has {img.shape[0]} channels but modalities name {len(self.modalities)}")
        if missing and len(set(missing)) == len(self.modalities):
            raise MissingModalitiesError(
                f"{name} has none of the modalities the model needs ({', '.join(self.modalities)}); "
                "at least one must be present"
            )
        out = img.clone()
        imputed: list[str] = []
        if missing and self.templates is None:
            logger.warning(f"{name}: {missing} missing and no templates available; those channels stay zero")
        elif missing:
            for m in missing:
                out[self.modalities.index(m)] = _template_channel(self.templates, m, img)
            imputed = list(missing)
            logger.info(f"{name}: imputed {imputed} with their distilled modality templates")
        if isinstance(out, MetaTensor):
            out.meta["imputed_modalities"] = ",".join(imputed)
            out.meta["missing_modalities"] = ",".join(missing)
        return out


class ImputeMissingModalitiesd(MapTransform):
    """Dictionary version of :class:`ImputeMissingModalities`.

    Reads the missing modalities from ``data[missing_key]`` (written by ``LoadModalitiesd(...,
    allow_missing=True)``), fills them, and lists the imputed ones in ``data[imputed_key]`` and in the image
    meta data (``meta["imputed_modalities"]``, comma-separated, so it survives collation and is written
    into saved predictions' meta). The case is named in errors by ``data["case"]`` when present, else by the
    image file name.
    """

    backend = ImputeMissingModalities.backend

    def __init__(
        self,
        keys: KeysCollection,
        templates,
        modalities: Sequence[str],
        missing_key: str = "missing_modalities",
        imputed_key: str = "imputed_modalities",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.imputer = ImputeMissingModalities(templates, modalities)
        self.missing_key = missing_key
        self.imputed_key = imputed_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        missing = list(d.get(self.missing_key) or [])
        for key in self.key_iterator(d):
            img = d[key]
            case = d.get("case")
            if case is None and isinstance(img, MetaTensor):
                case = img.meta.get("filename_or_obj")
            d[key] = self.imputer(img, missing, case=None if case is None else str(case))
            imputed = d[key].meta.get("imputed_modalities", "") if isinstance(d[key], MetaTensor) else ""
            d[self.imputed_key] = [m for m in str(imputed).split(",") if m]
        return d


def _names(value) -> list[str]:
    """Modality names from a comma-separated string or a (possibly collated) sequence of names."""
    if value is None:
        return []
    if isinstance(value, str):
        return [m for m in value.split(",") if m]
    names = []
    for v in value:
        names.extend(_names(v) if isinstance(v, (list, tuple)) else [str(v)])
    return names


class SaveModalityRecordd(MapTransform):
    """Write a JSON sidecar next to each saved prediction saying which modalities the model saw and which were
    imputed (NIfTI writers keep no free-form meta data, so the record cannot travel in the image header).

    Place it after ``SaveImaged(..., savepath_in_metadict=True)``: the prediction's ``meta["saved_to"]`` gives
    the image file, and ``<name>.json`` (the image file name with its ``.nii.gz``/``.nii`` suffix replaced) is
    written atomically beside it::

        {"case": ..., "modalities_used": [...], "imputed_modalities": [...], "missing_modalities": [...]}

    ``modalities_used`` are the model's input modalities the case has, ``imputed_modalities`` those filled with
    templates, ``missing_modalities`` every absent one (those not imputed stayed zero: no templates were given).

    Args:
        keys: the saved prediction key(s).
        modalities: the model's input modalities, in channel order.
        image_key: the key of the preprocessed image whose meta data (from :class:`ImputeMissingModalitiesd`)
            lists the missing and imputed modalities; the prediction's meta data is used when it has no entry.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str],
        image_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modalities = canonical_modalities(modalities)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        from brainmvp_components.datalist import case_id_from_path
        from brainmvp_components.modalities import strip_nifti_suffix
        from brainmvp_components.reports import write_json

        d = dict(data)
        for key in self.key_iterator(d):
            pred_meta = d[key].meta if isinstance(d[key], MetaTensor) else {}
            saved = pred_meta.get("saved_to")
            if not saved:
                raise ValueError(
                    f"{key!r} has no 'saved_to' meta data: run SaveImaged with savepath_in_metadict=True before "
                    f"{type(self).__name__}"
                )
            image = d.get(self.image_key)
            meta = image.meta if isinstance(image, MetaTensor) and "missing_modalities" in image.meta else pred_meta
            missing = _names(meta.get("missing_modalities"))
            imputed = _names(meta.get("imputed_modalities"))
            case = d.get("case") or case_id_from_path(meta.get("filename_or_obj") or saved)
            record = {
                "case": str(case),
                "modalities_used": [m for m in self.modalities if m not in missing],
                "imputed_modalities": [m for m in self.modalities if m in imputed],
                "missing_modalities": [m for m in self.modalities if m in missing],
            }
            saved = Path(str(saved))
            write_json(saved.with_name(strip_nifti_suffix(saved) + ".json"), record)
        return d
