"""Distilled modality templates used as data during fine-tuning and inference.

Two uses of the frozen templates that pre-training distils (one volume per modality on the atlas grid):

- :class:`RandTemplateReplace` / :class:`RandTemplateReplaced` (training augmentation, the paper's "template
  augmentation"): replace a random subset of input channels by their modality's template, resampled at the
  sample's physical location. The dictionary version can also write a second, independently augmented copy
  (``image_pair``) for the paired-consistency loss of :class:`~brainmvp_components.engines.consistency.
  ConsistencyTrainer`. Apply it after the random crop so that only the crop is resampled.
- :class:`ImputeMissingModalities` / :class:`ImputeMissingModalitiesd` (inference): fill the channels of
  modalities a case lacks (listed by :class:`~brainmvp_components.transforms.io.LoadModalitiesd` in
  ``data["missing_modalities"]``) with their templates, registered to the case with ITK unless it is already
  in the templates' atlas frame (:mod:`brainmvp_components.transforms.registration`), resampled to the case grid;
  :class:`SaveModalityRecordd` then records next to each saved prediction which modalities were imputed.

Both take the templates as a :class:`~brainmvp_components.networks.templates.ModalityTemplates`, or a directory of
``template_<modality>.nii.gz`` files (the pre-training bundle's ``models/templates``); see
:func:`load_frozen_templates`.
"""

from __future__ import annotations

import json
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
    "ImputeMissingModalities",
    "ImputeMissingModalitiesd",
    "MissingModalitiesError",
    "SaveModalityRecordd",
    "REGISTRATION_MODES",
    "registration_pair",
]

logger = logging.getLogger(__name__)


class MissingModalitiesError(ValueError):
    """A case holds none of the modalities the model needs."""


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


def _affine_of(img: torch.Tensor) -> torch.Tensor:
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
    volume = templates.resample_to_grid(modality, _affine_of(img), tuple(img.shape[1:]))
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


REGISTRATION_MODES: tuple[str, ...] = ("auto", "always", "never")
"""How :class:`ImputeMissingModalities` places the templates on a case: ``"auto"`` registers unless the case is in
the templates' atlas frame, ``"always"`` registers every case, ``"never"`` places by world coordinates."""

REGISTRATION_META_KEY = "template_registration"
"""Image meta-data key of the registration record (a JSON string, so that it survives collation)."""


def registration_pair(present: Sequence[str], template_modalities: Sequence[str]) -> tuple[str, str]:
    """``(case channel, template)`` to register: the first present modality that has a template, to its own
    template; when no present modality has one, the fallback pairs the first template (``t1`` when available)
    with the first present channel, which mutual information handles across contrasts."""
    for modality in present:
        if modality in template_modalities:
            return modality, modality
    if not present or not template_modalities:
        raise ValueError("registration needs a present channel and at least one template")
    fallback = "t1" if "t1" in template_modalities else template_modalities[0]
    return present[0], fallback


class ImputeMissingModalities(Transform):
    """Fill the channels of missing modalities with their frozen templates, registered to the case.

    The templates live in the BraTS/SRI24 atlas frame. A case in that frame (its grid covers the atlas field of
    view in the atlas orientation, :func:`~brainmvp_components.transforms.registration.in_atlas_frame`) takes them by
    world
    coordinates, as before. Any other case first gets an affine registration with ITK
    (:func:`~brainmvp_components.transforms.registration.register_to_template`: Mattes mutual information, from the
    template of a modality the case has to that modality's channel; when the case has no such modality, the
    first template to the first present channel), and the missing modalities' templates are then resampled
    through that transform onto the case's grid. Should ITK fail, the centres of mass and sizes are aligned
    instead (``method="moments"``) with a warning.

    Args:
        templates: see :func:`load_frozen_templates`. Without templates, missing channels stay zero and a
            warning says so.
        modalities: the modality of each input channel, in channel order (the model's input order).
        registration: ``"auto"``, ``"always"`` or ``"never"`` (see :data:`REGISTRATION_MODES`).
        registration_kwargs: passed to :func:`~brainmvp_components.transforms.registration.register_to_template`
        (levels,
            iterations, sampling).
        min_coverage: warn when the imputed channels cover less than this fraction of the case's foreground.

    ``__call__(img, missing, case=None)``: ``img`` is a ``MetaTensor (C, H, W, D)`` whose channels for the
    modalities in ``missing`` are placeholders; returns a copy with those channels replaced and
    ``meta["imputed_modalities"]`` listing what was filled. Raises :class:`MissingModalitiesError` naming
    ``case`` when every channel is missing. ``meta["missing_modalities"]`` lists the placeholders (imputed
    or, without templates, left zero), comma-separated like ``imputed_modalities``; ``meta["template_registration"]``
    holds the placement record as JSON (:meth:`TemplateRegistration.as_record
    <brainmvp_components.transforms.registration.TemplateRegistration.as_record>` plus ``quality.coverage``, the
    fraction
    of the case's foreground the imputed channels cover), ``""`` when nothing was imputed. The last record is
    also in :attr:`last_registration`.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        templates,
        modalities: Sequence[str],
        registration: str = "auto",
        registration_kwargs: dict | None = None,
        min_coverage: float = 0.9,
    ) -> None:
        if registration not in REGISTRATION_MODES:
            raise ValueError(f"registration must be one of {REGISTRATION_MODES}, got {registration!r}")
        self.modalities = canonical_modalities(modalities)
        self.templates = load_frozen_templates(templates, required=self.modalities, purpose="template imputation")
        self.registration = registration
        self.registration_kwargs = dict(registration_kwargs or {})
        self.min_coverage = float(min_coverage)
        self.last_registration: dict | None = None

    def place(self, img: torch.Tensor, present: Sequence[str], case: str = "the case"):
        """The :class:`~brainmvp_components.transforms.registration.TemplateRegistration` placing the templates on
        ``img``."""
        from brainmvp_components.transforms.registration import (
            RegistrationError,
            TemplateRegistration,
            in_atlas_frame,
            moments_alignment,
            register_to_template,
        )

        affine = _affine_of(img).numpy()
        shape = tuple(img.shape[1:])
        template_affine = self.templates.affine.detach().cpu().numpy()
        if self.registration == "never":
            return TemplateRegistration(np.eye(4), "world_coordinates")
        if self.registration == "auto" and in_atlas_frame(affine, shape, template_affine, self.templates.spatial_shape):
            return TemplateRegistration(np.eye(4), "atlas_frame")
        fixed, moving = registration_pair(present, self.templates.modalities)
        channel = torch.as_tensor(img[self.modalities.index(fixed)]).detach().cpu().float().numpy()
        template = self.templates.as_arrays()[moving]
        try:
            return register_to_template(
                channel, affine, template, template_affine, fixed, moving, **self.registration_kwargs
            )
        except RegistrationError as err:
            logger.warning(f"{case}: {err}; aligning centres of mass and sizes instead")
            return moments_alignment(channel, affine, template, template_affine, fixed, moving)

    def __call__(self, img: torch.Tensor, missing: Sequence[str] = (), case: str | None = None) -> torch.Tensor:
        from brainmvp_components.transforms.registration import foreground_coverage, foreground_mask

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
        record = None
        if missing and self.templates is None:
            logger.warning(f"{name}: {missing} missing and no templates available; those channels stay zero")
        elif missing:
            present = [m for m in self.modalities if m not in missing]
            placement = self.place(img, present, name)
            grid = torch.as_tensor(placement.transform, dtype=torch.float64) @ _affine_of(img)
            placed = {}
            for m in missing:
                volume = self.templates.resample_to_grid(m, grid, tuple(img.shape[1:]))
                placed[m] = torch.as_tensor(volume).reshape(img.shape[1:]).to(out)
            foreground = foreground_of(img, [self.modalities.index(m) for m in present]).to(out.device)
            for m, volume in placed.items():
                out[self.modalities.index(m)] = volume * foreground
            imputed = list(missing)
            head = np.zeros(tuple(img.shape[1:]), dtype=bool)
            for m in present:
                head |= foreground_mask(torch.as_tensor(img[self.modalities.index(m)]).detach().cpu().float().numpy())
            covered = torch.stack(list(placed.values())).amin(0).detach().cpu().numpy()
            placement.quality["coverage"] = foreground_coverage(covered, head)
            record = placement.as_record()
            coverage = placement.quality["coverage"]
            how = {
                "atlas_frame": "placed by world coordinates (the case is in the templates' atlas frame)",
                "world_coordinates": "placed by world coordinates (registration off)",
                "moments": "aligned by centres of mass and sizes (registration failed)",
            }.get(placement.method, f"registered to the case's {placement.fixed_modality} (affine, mutual information)")
            logger.info(
                f"{name}: imputed {imputed} with the distilled templates, {how}; they cover {coverage:.0%} of the "
                "case's foreground"
            )
            if not coverage >= self.min_coverage:
                logger.warning(
                    f"{name}: the imputed {imputed} cover only {coverage:.0%} of the case's foreground; check the "
                    "registration (save the imputed volumes to look at them)"
                )
        self.last_registration = record
        if isinstance(out, MetaTensor):
            out.meta["imputed_modalities"] = ",".join(imputed)
            out.meta["missing_modalities"] = ",".join(missing)
            out.meta[REGISTRATION_META_KEY] = "" if record is None else json.dumps(record)
        return out


class ImputeMissingModalitiesd(MapTransform):
    """Dictionary version of :class:`ImputeMissingModalities`.

    Reads the missing modalities from ``data[missing_key]`` (written by ``LoadModalitiesd(...,
    allow_missing=True)``), fills them, and lists the imputed ones in ``data[imputed_key]`` and in the image
    meta data (``meta["imputed_modalities"]``, comma-separated, so it survives collation and is written
    into saved predictions' meta). The case is named in errors by ``data["case"]`` when present, else by the
    image's ``meta["case_id"]`` or file name.

    Args:
        keys: the image key.
        templates, modalities, registration, registration_kwargs, min_coverage: see
            :class:`ImputeMissingModalities`.
        missing_key, imputed_key: keys of the missing and imputed modality lists.
    """

    backend = ImputeMissingModalities.backend

    def __init__(
        self,
        keys: KeysCollection,
        templates,
        modalities: Sequence[str],
        missing_key: str = "missing_modalities",
        imputed_key: str = "imputed_modalities",
        registration: str = "auto",
        registration_kwargs: dict | None = None,
        min_coverage: float = 0.9,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.imputer = ImputeMissingModalities(
            templates,
            modalities,
            registration=registration,
            registration_kwargs=registration_kwargs,
            min_coverage=min_coverage,
        )
        self.missing_key = missing_key
        self.imputed_key = imputed_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        missing = list(d.get(self.missing_key) or [])
        for key in self.key_iterator(d):
            img = d[key]
            case = d.get("case")
            if case is None and isinstance(img, MetaTensor):
                case = img.meta.get("case_id") or img.meta.get("filename_or_obj")
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


def _first_string(value) -> str:
    """A meta-data string that collation may have wrapped in a list."""
    while isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return "" if value is None else str(value)


class SaveModalityRecordd(MapTransform):
    """Write a JSON sidecar next to each saved prediction saying which modalities the model saw, which were
    imputed and how the templates were placed (NIfTI writers keep no free-form meta data, so the record cannot
    travel in the image header); optionally write the imputed volumes beside it.

    Place it after ``SaveImaged(..., savepath_in_metadict=True)``: the prediction's ``meta["saved_to"]`` gives
    the image file, and ``<name>.json`` (the image file name with its ``.nii.gz``/``.nii`` suffix replaced) is
    written atomically beside it. The record is also put in the prediction's meta data under
    ``"modality_record"``, so a host that drops the writer from the postprocessing (MONAI Label writes the label
    itself) still gets it; without ``saved_to`` no file is written::

        {"case": ..., "modalities_used": [...], "imputed_modalities": [...], "missing_modalities": [...],
         "template_registration": {...} or null, "imputed_files": {modality: file name}}

    ``modalities_used`` are the model's input modalities the case has, ``imputed_modalities`` those filled with
    templates, ``missing_modalities`` every absent one (those not imputed stayed zero: no templates were given).
    ``template_registration`` (when something was imputed) says how the templates were placed: ``method``
    (``atlas_frame``, ``affine_mutual_information``, ``moments``, ``world_coordinates``), the modalities
    registered, ``transform_case_to_template_ras`` (4 x 4, case world mm to template world mm) and ``quality``
    (``coverage`` of the case's foreground, ``mutual_information``, ``seconds``). ``imputed_files`` lists the
    volumes written with ``save_imputed`` (else ``{}``).

    Args:
        keys: the saved prediction key(s).
        modalities: the model's input modalities, in channel order.
        image_key: the key of the preprocessed image whose meta data (from :class:`ImputeMissingModalitiesd`)
            lists the missing and imputed modalities; the prediction's meta data is used when it has no entry.
        save_imputed: also write each imputed channel, as the model saw it (its grid and scaled intensities), to
            ``<case>_imputed_<modality>.nii.gz`` beside the prediction, so that a user can look at it over the
            case's own images (viewers align them by their world coordinates).
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str],
        image_key: str = "image",
        save_imputed: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modalities = canonical_modalities(modalities)
        self.image_key = image_key
        self.save_imputed = save_imputed

    def _write_imputed(self, image, imputed: Sequence[str], folder: Path, case: str) -> dict[str, str]:
        from functools import partial

        import nibabel as nib

        from brainmvp_components.utils.writers import atomic_write

        if not imputed or not isinstance(image, MetaTensor):
            return {}
        affine = np.asarray(torch.as_tensor(image.affine, dtype=torch.float64).reshape(4, 4))
        files = {}
        for m in imputed:
            volume = torch.as_tensor(image[self.modalities.index(m)]).detach().cpu().float().numpy()
            path = folder / f"{case}_imputed_{m}.nii.gz"
            atomic_write(path, partial(nib.save, nib.Nifti1Image(volume, affine)), suffix=".nii.gz")
            files[m] = path.name
        return files

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        from brainmvp_components.data.datalist import case_id_from_path
        from brainmvp_components.data.modalities import strip_nifti_suffix
        from brainmvp_components.utils.writers import write_json

        d = dict(data)
        for key in self.key_iterator(d):
            pred_meta = d[key].meta if isinstance(d[key], MetaTensor) else {}
            saved = pred_meta.get("saved_to")
            image = d.get(self.image_key)
            meta = image.meta if isinstance(image, MetaTensor) and "missing_modalities" in image.meta else pred_meta
            missing = _names(meta.get("missing_modalities"))
            imputed = _names(meta.get("imputed_modalities"))
            source = meta.get("filename_or_obj") or saved
            case = str(d.get("case") or meta.get("case_id") or (case_id_from_path(source) if source else "case"))
            registration = _first_string(meta.get(REGISTRATION_META_KEY))
            imputed = [m for m in self.modalities if m in imputed]
            files = {}
            if saved and self.save_imputed:
                files = self._write_imputed(image, imputed, Path(str(saved)).parent, case)
            record = {
                "case": case,
                "modalities_used": [m for m in self.modalities if m not in missing],
                "imputed_modalities": imputed,
                "missing_modalities": [m for m in self.modalities if m in missing],
                "template_registration": json.loads(registration) if registration else None,
                "imputed_files": files,
            }
            if isinstance(d[key], MetaTensor):
                d[key].meta["modality_record"] = record
            if saved:
                saved = Path(str(saved))
                write_json(saved.with_name(strip_nifti_suffix(saved) + ".json"), record)
            else:
                logger.info(f"{key!r} was not saved by SaveImaged (no 'saved_to' meta data): no record file for {case}")
        return d
