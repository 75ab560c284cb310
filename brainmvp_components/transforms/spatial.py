"""Spatial transforms that make MONAI's own usable in more hosts."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Spacingd

__all__ = ["SafeSpacingd"]


class SafeSpacingd(Spacingd):
    """:class:`monai.transforms.Spacingd` that leaves alone the entries beside its keys that are not meta data.

    MONAI 1.6's ``Spacingd`` treats every entry named ``<key>_...`` as a meta-data dictionary of ``<key>`` and calls
    ``update`` on it after resampling a NIfTI image. Hosts put other things under such names: MONAI Label's inference
    puts the input's path, a string, under ``image_path``, and ``Spacingd(keys="image")`` then fails with
    ``'str' object has no attribute 'update'``. This transform sets those entries (anything under ``<key>_...`` that
    is not a mutable mapping) aside, resamples exactly as ``Spacingd`` does, and puts them back unchanged. Its
    arguments, lazy resampling and ``inverse`` (used by ``Invertd``) are those of ``Spacingd``.
    """

    def _set_aside(self, d: dict) -> dict[Hashable, Any]:
        prefixes = tuple(f"{key}_" for key in self.keys)
        return {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and k.startswith(prefixes) and not hasattr(d[k], "update")
        }

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        aside = self._set_aside(d)
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d
