"""Loading a case's modalities into channels, keeping their canonical names.

Every file is checked as strictly as :func:`brainmvp_components.data.checks.verify_case` checks a data set (the
same functions do it): its dimensionality as stored, before any channel conversion; finite values; not a
constant image; a valid affine; every channel on one grid. A failed check raises :class:`CaseLoadError`, whose
``problems`` name the case, the file and what is wrong.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage, MapTransform, Transform
from monai.utils import TransformBackends

from brainmvp_components.data.checks import AFFINE_TOLERANCE, file_shape_problem, grid_problem, volume_problems
from brainmvp_components.data.discovery import case_id_from_path
from brainmvp_components.data.modalities import CANONICAL_MODALITIES, UnknownModalityError, canonical_modalities
from brainmvp_components.data.problems import DatasetProblem

__all__ = ["CASE_ID_KEY", "CaseLoadError", "LoadModalities", "LoadModalitiesd"]

CASE_ID_KEY = "case_id"
"""Meta-data key of the case identifier in loaded images; outputs are named after it."""


class CaseLoadError(ValueError):
    """A case's files cannot be loaded as one multi-channel volume.

    Args:
        problems: what is wrong, each naming the case and the file (:class:`~brainmvp_components.data.problems.
            DatasetProblem`), or one message.
        case, file: the case and file of a single ``message``.

    Attributes:
        problems: the list of problems; ``str(error)`` joins them with ``"; "``.
    """

    def __init__(self, problems: str | Sequence[DatasetProblem], case: str | None = None, file: str | None = None):
        if isinstance(problems, str):
            problems = [DatasetProblem(case, None if file is None else str(file), problems)]
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class LoadModalities(Transform):
    """Load one case's modalities into a channel-first ``MetaTensor (C, H, W, D)``, checking every file.

    A case is either a list of per-modality 3-D files (one channel each) or one 4-D multi-channel file
    (how MONAI Label hands images over). ``names`` gives the modality of each file or channel (any
    alias from :mod:`brainmvp_components.data.modalities`).

    Each file's shape is checked as stored, before channel conversion (a 4-D file listed as one modality is an
    error, not three scrambled channels), then each channel's values (finite, not constant) and every file's
    grid against the first (:func:`~brainmvp_components.data.checks.file_shape_problem`,
    :func:`~brainmvp_components.data.checks.volume_problems`, :func:`~brainmvp_components.data.checks.grid_problem`,
    the checks :func:`~brainmvp_components.data.checks.verify_case` applies to a data set).

    Args:
        modalities: the channels wanted, in order (the model's input order). ``None`` keeps the case's
            own channels in their given order.
        allow_missing: when ``modalities`` is given and the case lacks some of them, fill those channels
            with zeros (to be imputed later, e.g. by templates) instead of raising.
        reader: passed to :class:`monai.transforms.LoadImage`.
        verify: check values (finite, not constant) besides shapes and grids; ``False`` skips the value checks.

    Returns:
        ``(image, present, missing)``: the image, the canonical names of its channels, and the wanted
        modalities that were absent (zero channels). ``image.meta["case_id"]`` holds the case identifier.

    Raises:
        UnknownModalityError: a name in ``names`` is not a known modality (the message names the case).
        CaseLoadError: an unreadable file, a wrong dimensionality, non-finite values, a constant image, channels
            on different grids, a 4-D file whose channel count differs from ``names``, or (without
            ``allow_missing``) an absent modality; every problem of the case is listed.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self, modalities: Sequence[str] | None = None, allow_missing: bool = False, reader=None, verify: bool = True
    ) -> None:
        self.modalities = None if modalities is None else canonical_modalities(modalities)
        self.allow_missing = allow_missing
        self.verify = verify
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=False)
        self.channel_first = EnsureChannelFirst()

    def _read(self, path: str | Path, case: str, names: Sequence[str] | None) -> MetaTensor:
        """One file as ``(C, H, W, D)``; ``names`` are the channels of a multi-channel file, ``None`` for one
        modality per file."""
        try:
            raw = self.loader(str(path))
        except Exception as err:  # readers raise many types for corrupt or truncated files
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise CaseLoadError(f"unreadable or corrupt ({reason})", case, path) from err
        problem = file_shape_problem(case, path, raw.shape, None if names is None else len(names))
        if problem is not None:
            raise CaseLoadError([problem])
        img = self.channel_first(raw)
        if img.ndim != 4:  # a reader that squeezes or adds axes differently than expected
            raise CaseLoadError(f"expected a 3-D volume, got shape {tuple(img.shape)} after loading", case, path)
        problems = []
        for c in range(img.shape[0]) if self.verify else ():
            what = None if names is None else f"volume {c} ({names[c]})"
            affine = img.affine if c == 0 else None
            problems += volume_problems(case, path, img[c].detach().cpu().numpy(), affine, what=what)
        if problems:
            raise CaseLoadError(problems)
        return img

    def __call__(self, image: str | Path | Sequence[str | Path], names: Sequence[str], case: str | None = None):
        case = case or case_id_from_path(image if isinstance(image, (str, Path)) else list(image) or "?")
        try:
            names = canonical_modalities(names)
        except UnknownModalityError as err:
            raise UnknownModalityError(f"case {case!r}: {err}") from err
        except ValueError as err:
            raise CaseLoadError(str(err), case) from err
        if isinstance(image, (str, Path)):
            volume = self._read(image, case, names)
        else:
            if not image:
                raise CaseLoadError("no image files", case)
            if len(image) != len(names):
                raise CaseLoadError(f"{len(image)} files but {len(names)} modalities named {names}", case)
            channels, problems = [], []
            for path in image:
                try:
                    channels.append(self._read(path, case, None))
                except CaseLoadError as err:
                    problems += err.problems
            if problems:
                raise CaseLoadError(problems)
            _check_same_grid(channels, image, case)
            volume = torch.cat(channels, dim=0)
            volume.meta["filename_or_obj"] = str(image[0])
        volume = volume.float() if not torch.is_floating_point(volume) else volume
        volume.meta[CASE_ID_KEY] = str(case)
        if self.modalities is None:
            return volume, names, []
        missing = [m for m in self.modalities if m not in names]
        if missing and not self.allow_missing:
            raise CaseLoadError(f"modalities {missing} are required but the case has only {names}", case)
        if len(missing) == len(self.modalities):
            raise CaseLoadError(f"none of the required modalities {self.modalities} is present (has {names})", case)
        zero = torch.zeros_like(volume[:1])
        selected = [volume[names.index(m)][None] if m in names else zero for m in self.modalities]
        out = torch.cat(selected, dim=0)
        return out, list(self.modalities), missing


def _check_same_grid(channels: Sequence[MetaTensor], paths: Sequence, case: str) -> None:
    ref, ref_path = channels[0], paths[0]
    problems = []
    for img, path in zip(channels[1:], paths[1:]):
        message = grid_problem(
            img.shape[1:],
            np.asarray(img.affine),
            ref.shape[1:],
            np.asarray(ref.affine),
            Path(str(ref_path)).name,
            AFFINE_TOLERANCE,
        )
        if message is not None:
            problems.append(DatasetProblem(case, str(path), f"not on the case's grid: {message.splitlines()[0]}"))
    if problems:
        raise CaseLoadError(problems)


class LoadModalitiesd(MapTransform):
    """Dictionary-based :class:`LoadModalities`.

    Reads ``data[key]`` (a list of files or one 4-D file) and ``data[modalities_key]`` (their modality
    names). Writes the image to ``data[key]``, the canonical channel names to ``data[modalities_key]``,
    the channels' indices into :data:`~brainmvp_components.data.modalities.CANONICAL_MODALITIES` to
    ``data["modality_index"]`` (``LongTensor (C,)``) and the absent wanted modalities to
    ``data["missing_modalities"]``. The case is ``data["case"]`` when present, else it is named after the file
    (:func:`~brainmvp_components.data.discovery.case_id_from_path`); it is named in errors and stored in the image's
    ``meta["case_id"]``, after which outputs are named.

    Args:
        keys: the image key (one key).
        modalities_key: the key holding the channel names.
        modalities: see :class:`LoadModalities`.
        allow_missing: see :class:`LoadModalities`.
        default_modalities: channel names used when ``data`` has no ``modalities_key`` (e.g. MONAI Label's
            ``{"image": path}`` items, whose channels follow the bundle's configured order).
        reader: see :class:`LoadModalities`.
        verify: see :class:`LoadModalities`.
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
        verify: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modalities_key = modalities_key
        self.default_modalities = default_modalities if default_modalities is not None else modalities
        self.loader = LoadModalities(modalities=modalities, allow_missing=allow_missing, reader=reader, verify=verify)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            names = d.get(self.modalities_key, self.default_modalities)
            case = d.get("case") or case_id_from_path(d[key] if isinstance(d[key], (str, Path)) else list(d[key]))
            if names is None:
                raise CaseLoadError(
                    f"no '{self.modalities_key}' entry and no default modalities configured, so the channels "
                    "cannot be named",
                    case,
                )
            if isinstance(names, str):
                names = [names]
            image, present, missing = self.loader(d[key], names, case=str(case))
            d[key] = image
            d[self.modalities_key] = present
            d["modality_index"] = torch.tensor([CANONICAL_MODALITIES.index(m) for m in present], dtype=torch.long)
            d["missing_modalities"] = missing
        return d
