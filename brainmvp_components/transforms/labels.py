"""BraTS label maps and the region channels (TC, WT, ET) the networks predict.

BraTS 2018-2021 label necrosis 1, oedema 2 and enhancing tumour 4; BraTS 2023 labels enhancing
tumour 3. The regions are nested: tumour core TC = necrosis + enhancing, whole tumour WT = all
tumour, enhancing tumour ET = enhancing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from brainmvp_components.data.brats import (
    BRATS_CONVENTIONS,
    NECROSIS_LABEL,
    OEDEMA_LABEL,
    REGION_NAMES,
    enhancing_label,
)

__all__ = [
    "BRATS_CONVENTIONS",
    "REGION_NAMES",
    "enhancing_label",
    "BratsLabelToRegions",
    "BratsLabelToRegionsd",
    "RegionsToBratsLabel",
    "RegionsToBratsLabeld",
]


class BratsLabelToRegions(Transform):
    """Convert a BraTS label map to three binary region channels ``(TC, WT, ET)``.

    Args:
        convention: ``"brats2021"`` (enhancing tumour labelled 4; BraTS 2018-2021) or ``"brats2023"`` (labelled 3).

    Input ``(1, H, W, D)`` or ``(H, W, D)`` label map; output ``(3, H, W, D)`` of the input's type, values 0/1.
    A label value outside ``{0, 1, 2, enhancing}`` raises ``ValueError``: a map in the other convention
    would otherwise lose its enhancing tumour silently.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, convention: str = "brats2021") -> None:
        self.et_label = enhancing_label(convention)
        self.convention = convention
        self._convert = ConvertToMultiChannelBasedOnBratsClasses(et_label=self.et_label)

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        values = torch.unique(torch.as_tensor(label)).tolist()
        allowed = {0, NECROSIS_LABEL, OEDEMA_LABEL, self.et_label}
        unexpected = sorted(v for v in values if v not in allowed)
        if unexpected:
            source = getattr(label, "meta", {}).get("filename_or_obj", "label")
            raise ValueError(
                f"{source}: label values {unexpected} are not in the {self.convention} convention "
                f"(expected a subset of {sorted(allowed)})"
            )
        regions = self._convert(label)
        out, *_ = convert_to_dst_type(regions, label, dtype=label.dtype)
        return out


class RegionsToBratsLabel(Transform):
    """Convert region channels ``(TC, WT, ET)`` back to one BraTS label map.

    Args:
        convention: ``"brats2021"`` or ``"brats2023"``; sets the value written for enhancing tumour.
        threshold: channels are binarised with ``> threshold`` (give probabilities, or binary maps).

    Input ``(3, H, W, D)``; output ``(1, H, W, D)`` with values in ``{0, 1, 2, enhancing}``: whole tumour is
    oedema unless inside the tumour core, the core is necrosis unless enhancing. The enhancing value
    is written wherever ET is predicted, so an inconsistent prediction keeps its enhancing voxels.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, convention: str = "brats2021", threshold: float = 0.5) -> None:
        self.et_label = enhancing_label(convention)
        self.threshold = threshold

    def __call__(self, regions: NdarrayOrTensor) -> NdarrayOrTensor:
        if regions.ndim != 4 or regions.shape[0] != len(REGION_NAMES):
            raise ValueError(
                f"expected region channels (3, H, W, D) ordered {REGION_NAMES}, got shape {tuple(regions.shape)}"
            )
        binary = torch.as_tensor(regions) > self.threshold
        tc, wt, et = binary[0], binary[1], binary[2]
        label = torch.zeros_like(tc, dtype=torch.uint8)
        label[wt] = OEDEMA_LABEL
        label[tc] = NECROSIS_LABEL
        label[et] = self.et_label
        out, *_ = convert_to_dst_type(
            label[None], regions, dtype=np.uint8 if isinstance(regions, np.ndarray) else torch.uint8
        )
        return out


class BratsLabelToRegionsd(MapTransform):
    """Dictionary-based :class:`BratsLabelToRegions`."""

    backend = BratsLabelToRegions.backend

    def __init__(self, keys: KeysCollection, convention: str = "brats2021", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BratsLabelToRegions(convention)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class RegionsToBratsLabeld(MapTransform):
    """Dictionary-based :class:`RegionsToBratsLabel`."""

    backend = RegionsToBratsLabel.backend

    def __init__(
        self,
        keys: KeysCollection,
        convention: str = "brats2021",
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToBratsLabel(convention, threshold)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
