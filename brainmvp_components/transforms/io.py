"""Loading a case's modalities into channels, keeping their canonical names."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import TransformBackends

from brainmvp_components.modalities import CANONICAL_MODALITIES, UnknownModalityError, canonical_modalities

__all__ = ["CaseLoadError", "LoadModalities", "LoadModalitiesd"]

AFFINE_TOLERANCE = 1e-3


class CaseLoadError(ValueError):
    """A case's files cannot be loaded as one multi-channel volume; the message names the case and file."""


def _describe(source: Any) -> str:
    if isinstance(source, (list, tuple)):
        return ", ".join(str(s) for s in source)
    return str(source)


class LoadModalities(Transform):
    """Load one case's modalities into a channel-first ``MetaTensor (C, H, W, D)``.

    A case is either a list of per-modality 3-D files (one channel each) or one 4-D multi-channel file
    (how MONAI Label hands images over). ``names`` gives the modality of each file or channel (any
    alias from :mod:`brainmvp_components.modalities`).

    Args:
        modalities: the channels wanted, in order (the model's input order). ``None`` keeps the case's
            own channels in their given order.
        allow_missing: when ``modalities`` is given and the case lacks some of them, fill those channels
            with zeros (to be imputed later, e.g. by templates) instead of raising.
        reader: passed to :class:`monai.transforms.LoadImage`.

    Returns:
        ``(image, present, missing)``: the image, the canonical names of its channels, and the wanted
        modalities that were absent (zero channels).

    Raises:
        UnknownModalityError: a name in ``names`` is not a known modality (the message names the case).
        CaseLoadError: unreadable file, wrong dimensionality, channels on different grids, a 4-D file whose
            channel count differs from ``names``, or (without ``allow_missing``) an absent modality.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, modalities: Sequence[str] | None = None, allow_missing: bool = False, reader=None) -> None:
        self.modalities = None if modalities is None else canonical_modalities(modalities)
        self.allow_missing = allow_missing
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)

    def _read(self, path: str | Path, case: str) -> MetaTensor:
        try:
            img = self.loader(str(path))
        except Exception as err:  # readers raise many types for corrupt or truncated files
            raise CaseLoadError(f"case {case}: cannot read {path}: {err}") from err
        if img.ndim != 4:
            raise CaseLoadError(f"case {case}: {path} has shape {tuple(img.shape[1:])}, expected a 3-D volume")
        return img

    def __call__(self, image: str | Path | Sequence[str | Path], names: Sequence[str], case: str | None = None):
        case = case or _case_name(image)
        try:
            names = canonical_modalities(names)
        except UnknownModalityError as err:
            raise UnknownModalityError(f"case {case}: {err}") from err
        except ValueError as err:
            raise CaseLoadError(f"case {case}: {err}") from err
        if isinstance(image, (str, Path)):
            volume = self._read(image, case)
            if volume.shape[0] != len(names):
                raise CaseLoadError(
                    f"case {case}: {image} has {volume.shape[0]} channels but {len(names)} modalities are named {names}"
                )
        else:
            if len(image) != len(names):
                raise CaseLoadError(f"case {case}: {len(image)} files but {len(names)} modalities named {names}")
            if not image:
                raise CaseLoadError(f"case {case}: no image files")
            channels = [self._read(p, case) for p in image]
            _check_same_grid(channels, image, case)
            volume = torch.cat(channels, dim=0)
            volume.meta["filename_or_obj"] = str(image[0])
        volume = volume.float() if not torch.is_floating_point(volume) else volume
        if self.modalities is None:
            return volume, names, []
        missing = [m for m in self.modalities if m not in names]
        if missing and not self.allow_missing:
            raise CaseLoadError(f"case {case}: modalities {missing} are required but the case has only {names}")
        if len(missing) == len(self.modalities):
            raise CaseLoadError(
                f"case {case}: none of the required modalities {self.modalities} is present (has {names})"
            )
        zero = torch.zeros_like(volume[:1])
        selected = [volume[names.index(m)][None] if m in names else zero for m in self.modalities]
        out = torch.cat(selected, dim=0)
        return out, list(self.modalities), missing


def _case_name(image) -> str:
    first = image if isinstance(image, (str, Path)) else (image[0] if len(image) else "?")
    return Path(str(first)).parent.name or str(first)


def _check_same_grid(channels: Sequence[MetaTensor], paths: Sequence, case: str) -> None:
    ref, ref_path = channels[0], paths[0]
    for img, path in zip(channels[1:], paths[1:]):
        if img.shape[1:] != ref.shape[1:]:
            raise CaseLoadError(
                f"case {case}: {path} has shape {tuple(img.shape[1:])} but {ref_path} has {tuple(ref.shape[1:])}"
            )
        if not np.allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=AFFINE_TOLERANCE):
            raise CaseLoadError(f"case {case}: {path} is not on the same grid (affine) as {ref_path}")


class LoadModalitiesd(MapTransform):
    """Dictionary-based :class:`LoadModalities`.

    Reads ``data[key]`` (a list of files or one 4-D file) and ``data[modalities_key]`` (their modality
    names). Writes the image to ``data[key]``, the canonical channel names to ``data[modalities_key]``,
    the channels' indices into :data:`~brainmvp_components.modalities.CANONICAL_MODALITIES` to
    ``data["modality_index"]`` (``LongTensor (C,)``) and the absent wanted modalities to
    ``data["missing_modalities"]``. The case is named in errors by ``data["case"]`` when present.

    Args:
        keys: the image key (one key).
        modalities_key: the key holding the channel names.
        modalities: see :class:`LoadModalities`.
        allow_missing: see :class:`LoadModalities`.
        default_modalities: channel names used when ``data`` has no ``modalities_key`` (e.g. MONAI Label's
            ``{"image": path}`` items, whose channels follow the bundle's configured order).
    """

    backend = LoadModalities.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        modalities_key: str = "modalities",
        modalities: Sequence[str] | None = None,
        allow_missing: bool = False,
        default_modalities: Sequence[str] | None = None,
        reader=None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modalities_key = modalities_key
        self.default_modalities = default_modalities if default_modalities is not None else modalities
        self.loader = LoadModalities(modalities=modalities, allow_missing=allow_missing, reader=reader)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            names = d.get(self.modalities_key, self.default_modalities)
            case = d.get("case")
            if names is None:
                raise CaseLoadError(
                    f"case {case or _case_name(d[key])}: no '{self.modalities_key}' entry and no default modalities "
                    "configured, so the channels cannot be named"
                )
            if isinstance(names, str):
                names = [names]
            image, present, missing = self.loader(d[key], names, case=case)
            d[key] = image
            d[self.modalities_key] = present
            d["modality_index"] = torch.tensor([CANONICAL_MODALITIES.index(m) for m in present], dtype=torch.long)
            d["missing_modalities"] = missing
        return d
