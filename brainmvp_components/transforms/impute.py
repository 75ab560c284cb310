"""Missing-modality imputation at inference: the channels of modalities a case lacks filled with their frozen
templates.

:class:`ImputeMissingModalities` / :class:`ImputeMissingModalitiesd` fill the channels listed by
:class:`~brainmvp_components.transforms.io.LoadModalitiesd` in ``data["missing_modalities"]`` with their templates,
registered to the case with ITK unless it is already in the templates' atlas frame
(:mod:`brainmvp_components.transforms.registration`), resampled to the case grid; :class:`SaveModalityRecordd` then
records next to each saved prediction which modalities were imputed.
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
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from brainmvp_components.data.modalities import canonical_modalities, canonical_modality
from brainmvp_components.transforms.templates import foreground_of, image_affine, load_frozen_templates

__all__ = [
    "FILL_MODES",
    "ImputeMissingModalities",
    "ImputeMissingModalitiesd",
    "MissingModalitiesError",
    "REGISTRATION_MODES",
    "SaveModalityRecordd",
    "registration_pair",
]

logger = logging.getLogger(__name__)


class MissingModalitiesError(ValueError):
    """A case holds none of the modalities the model needs."""


REGISTRATION_MODES: tuple[str, ...] = ("auto", "always", "never")
"""How :class:`ImputeMissingModalities` places the templates on a case: ``"auto"`` registers unless the case is in
the templates' atlas frame, ``"always"`` registers every case, ``"never"`` places by world coordinates."""

FILL_MODES: tuple[str, ...] = ("templates", "zeros", "mean")
"""What fills a missing channel: its distilled template (the method), zeros, or the mean intensity of the case's
present channels inside its foreground; the last two are the baselines that show what the templates add."""

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
        fill: one of :data:`FILL_MODES`; ``"zeros"`` and ``"mean"`` need no templates and place nothing.

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
        fill: str = "templates",
    ) -> None:
        if registration not in REGISTRATION_MODES:
            raise ValueError(f"registration must be one of {REGISTRATION_MODES}, got {registration!r}")
        if fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        self.modalities = canonical_modalities(modalities)
        self.fill = fill
        self.templates = (
            load_frozen_templates(templates, required=self.modalities, purpose="template imputation")
            if fill == "templates"
            else None
        )
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

        affine = image_affine(img).numpy()
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
        if missing and self.fill != "templates":
            present = [self.modalities.index(m) for m in self.modalities if m not in missing]
            foreground = foreground_of(img, present).to(out.device)
            value = 0.0
            if self.fill == "mean" and bool(foreground.any()):
                value = float(torch.as_tensor(img).as_subclass(torch.Tensor)[present][:, foreground].float().mean())
            for m in missing:
                out[self.modalities.index(m)] = foreground.to(out.dtype) * value
            imputed = list(missing)
            logger.info(f"{name}: filled {imputed} with {self.fill} (a baseline without templates)")
        elif missing and self.templates is None:
            logger.warning(f"{name}: {missing} missing and no templates available; those channels stay zero")
        elif missing:
            present = [m for m in self.modalities if m not in missing]
            placement = self.place(img, present, name)
            grid = torch.as_tensor(placement.transform, dtype=torch.float64) @ image_affine(img)
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
        templates, modalities, registration, registration_kwargs, min_coverage, fill: see
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
        fill: str = "templates",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.imputer = ImputeMissingModalities(
            templates,
            modalities,
            registration=registration,
            registration_kwargs=registration_kwargs,
            min_coverage=min_coverage,
            fill=fill,
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
        from brainmvp_components.data.discovery import case_id_from_path
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
