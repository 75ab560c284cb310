"""Linear probes of frozen encoder features: what a pre-trained encoder learned, read out without fine-tuning.

A pre-trained single-channel encoder embeds each modality of a case on its own (as it was pre-trained, one
modality at a time). Its four stage outputs are upsampled to the input grid and stacked, giving every voxel a
feature vector (``4 x sum(dims)`` values for four modalities); a logistic regression per BraTS region (TC, WT,
ET) is fitted on voxels sampled from the labelled cases and scored by Dice on whole held-out cases. The same
probe on a randomly initialised encoder of the same size is the baseline: a pre-training that learned nothing
transferable scores like it, since a trainable decoder does well enough on random features. The probe's only
trainable part is linear, so a difference between encoders is a difference in what their features hold.

:func:`probe_encoders` runs the whole measurement; ``scripts/probe_encoder.py`` is its command line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.transforms import (
    Compose,
    LoadImaged,
    Orientationd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from torch import nn

from brainmvp_components.data.brats import REGION_NAMES
from brainmvp_components.data.datalist import load_datalist
from brainmvp_components.networks.uniformer import uniformer_preset
from brainmvp_components.transforms.io import LoadModalitiesd
from brainmvp_components.transforms.labels import BratsLabelToRegionsd

__all__ = [
    "EncoderFeatures",
    "LinearProbe",
    "ProbeCase",
    "fit_linear_probe",
    "load_probe_cases",
    "load_single_channel_encoder",
    "probe_encoders",
    "sample_probe_voxels",
]


@dataclass
class ProbeCase:
    """One case as the probe sees it: ``image (C, H, W, D)`` scaled to [0, 1] per channel, ``regions (3, H, W, D)``
    booleans (TC, WT, ET) and ``head (H, W, D)``, the voxels where any channel is above zero."""

    name: str
    image: torch.Tensor
    regions: torch.Tensor
    head: torch.Tensor


def load_probe_cases(
    datalist: str | Path,
    split: str,
    modalities: Sequence[str] = ("t1", "t1c", "t2", "flair"),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    label_convention: str = "brats2021",
) -> list[ProbeCase]:
    """The cases of one split of a datalist, preprocessed as the segmentation bundle does (RAS, ``spacing``,
    5th/95th percentile scaling per channel).

    Raises:
        ValueError: the split is empty or a case has no label.
    """
    entries = load_datalist(str(datalist), split)
    if not entries:
        raise ValueError(f"datalist {datalist} has no cases in split {split!r}")
    transform = Compose(
        [
            LoadModalitiesd("image", modalities=list(modalities), default_modalities=list(modalities)),
            LoadImaged("label", ensure_channel_first=True),
            Orientationd(["image", "label"], axcodes="RAS"),
            Spacingd(["image", "label"], pixdim=tuple(spacing), mode=["bilinear", "nearest"]),
            BratsLabelToRegionsd("label", convention=label_convention),
            ScaleIntensityRangePercentilesd("image", 5, 95, 0.0, 1.0, clip=True, channel_wise=True),
        ]
    )
    cases = []
    for entry in entries:
        if not entry.get("label"):
            raise ValueError(f"case {entry.get('case', entry['image'])} in {datalist} has no label to probe against")
        data = transform(dict(entry))
        image = torch.as_tensor(data["image"]).float()
        cases.append(
            ProbeCase(
                name=entry["case"],
                image=image,
                regions=torch.as_tensor(data["label"]).bool(),
                head=(image > 0).any(dim=0),
            )
        )
    return cases


def load_single_channel_encoder(path: str | Path | None, preset: str = "tiny", seed: int = 0) -> nn.Module:
    """A single-channel UniFormer of ``preset``: the weights at ``path`` (a pre-training's ``encoder.pt``, or one of
    its training checkpoints, whose ``network`` holds the encoder under ``encoder.``; loaded with
    ``weights_only=True``), or, with ``path=None``, random weights drawn with ``seed``. In eval mode.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file does not fit the preset (the message names the file).
    """
    torch.manual_seed(seed)
    encoder = uniformer_preset(preset, in_channels=1)
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"encoder weights {path} do not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "network" in state:  # a training checkpoint of the pre-training bundle
            state = {k[len("encoder.") :]: v for k, v in state["network"].items() if k.startswith("encoder.")}
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path} is not a single-channel UniFormer-{preset} encoder: {e}") from None
    return encoder.eval()


class EncoderFeatures(nn.Module):
    """Multi-scale features of a single-channel encoder over whole volumes.

    ``forward(x (B, 1, h, w, d))`` returns the encoder's four stage outputs ``(B, dims[i], h / 2^(i+1), ...)``;
    :meth:`volume` runs it over a whole modality in sliding windows of the crop size the encoder was trained on
    (its attention stages saw that many tokens), each stage stitched at its own resolution.
    """

    def __init__(self, encoder: nn.Module, roi_size: Sequence[int] = (32, 32, 32), overlap: float = 0.25) -> None:
        super().__init__()
        self.encoder = encoder
        self.channels = int(sum(encoder.out_channels))
        self.inferer = SlidingWindowInferer(roi_size=list(roi_size), sw_batch_size=4, overlap=overlap, mode="gaussian")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.encoder(x)[1:])

    @torch.no_grad()
    def volume(self, channel: torch.Tensor) -> list[torch.Tensor]:
        """Stage maps ``[(dims[i], H / 2^(i+1), ...)]`` of one modality ``(H, W, D)`` (sides divisible by 16)."""
        return [m[0] for m in self.inferer(channel[None, None], self)]


def _pad_to_multiple(image: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """``image (C, H, W, D)`` zero-padded at the far end of each axis to sides divisible by ``multiple``."""
    pads = [(-s) % multiple for s in image.shape[1:]]
    return F.pad(image, [p for side in reversed(pads) for p in (0, side)])


def stage_maps(extractor: EncoderFeatures | None, case: ProbeCase) -> list[torch.Tensor]:
    """The feature maps a probe reads for ``case``: for each encoder stage, the maps of every modality stacked
    ``(C * dims[i], ...)`` on the padded grid; without an encoder, the intensities ``(C, H, W, D)``."""
    if extractor is None:
        return [case.image]
    image = _pad_to_multiple(case.image)
    per_modality = [extractor.volume(image[c]) for c in range(image.shape[0])]
    return [torch.cat(stage) for stage in zip(*per_modality)]


def _sample_maps(maps: Sequence[torch.Tensor], indices: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``(N, F)`` features at the flat voxel ``indices`` of a grid of ``shape``: every map trilinearly interpolated
    there, as upsampling it to the grid would give (``align_corners=False``). A map of side ``M`` covers
    ``M * s`` voxels with ``s`` its power-of-two downsampling factor (a padded grid extends past ``shape``), and
    puts voxel ``i`` at ``(i + 0.5) / s - 0.5``."""
    coords = np.stack(np.unravel_index(indices, tuple(shape)), axis=1).astype(np.float64)
    columns = []
    for m in maps:
        sides = np.asarray(m.shape[1:], dtype=np.float64)
        covered = sides * 2.0 ** np.ceil(np.log2(np.asarray(shape) / sides))
        normalised = (2.0 * (coords + 0.5) / covered - 1.0)[:, ::-1].copy()  # grid_sample's last axis is x (W)
        grid = torch.as_tensor(normalised, dtype=torch.float32).view(1, -1, 1, 1, 3)
        values = F.grid_sample(m[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        columns.append(values[0, :, :, 0, 0].T.numpy())
    return np.concatenate(columns, axis=1)


def _probe_logits(probe: LinearProbe, maps: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """``(3, *shape)`` logits of the probe over a whole case: each map's share of the read-out is computed at the
    map's resolution and upsampled (a linear read-out commutes with trilinear interpolation)."""
    weight = probe.weight / probe.std[:, None]
    bias = probe.bias - probe.mean / probe.std @ probe.weight
    logits = torch.zeros((weight.shape[1], *shape), dtype=torch.float32)
    offset = 0
    for m in maps:
        block = torch.as_tensor(weight[offset : offset + m.shape[0]], dtype=torch.float32)
        offset += m.shape[0]
        share = torch.einsum("c...,cr->r...", m.float(), block)
        covered = [int(s * 2 ** np.ceil(np.log2(g / s))) for s, g in zip(m.shape[1:], shape)]
        if list(share.shape[1:]) != covered:
            share = F.interpolate(share[None], size=covered, mode="trilinear", align_corners=False)[0]
        logits += share[:, : shape[0], : shape[1], : shape[2]]
    return logits + torch.as_tensor(bias, dtype=torch.float32).view(-1, 1, 1, 1)


def sample_probe_voxels(case: ProbeCase, per_class: int, generator: np.random.Generator) -> np.ndarray:
    """Flat indices of up to ``per_class`` tumour (WT) voxels and as many other head voxels of ``case``."""
    tumour = case.regions[1].flatten().numpy()
    head = case.head.flatten().numpy()
    chosen = []
    for pool in (np.flatnonzero(tumour), np.flatnonzero(head & ~tumour)):
        if pool.size:
            chosen.append(generator.choice(pool, size=min(per_class, pool.size), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


@dataclass
class LinearProbe:
    """Per-region logistic regressions on standardised features: ``logits = ((f - mean) / std) @ weight + bias``
    with ``weight (F, 3)``, ``bias (3,)``, ``mean`` and ``std (F,)``."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(N, 3)`` logits of ``(N, F)`` features."""
        return ((features - self.mean) / self.std) @ self.weight + self.bias


def fit_linear_probe(features: np.ndarray, regions: np.ndarray, l2: float = 1.0) -> LinearProbe:
    """Fit one L2-regularised logistic regression per region on ``features (N, F)`` and ``regions (N, 3)``.

    A region absent (or everywhere) in the sample gets a constant probe that predicts its majority.
    """
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    standardised = (features - mean) / std
    weight = np.zeros((features.shape[1], regions.shape[1]))
    bias = np.zeros(regions.shape[1])
    for r in range(regions.shape[1]):
        target = regions[:, r].astype(bool)
        if target.all() or not target.any():
            bias[r] = 20.0 if target.all() else -20.0
            continue
        model = LogisticRegression(C=1.0 / l2, max_iter=500).fit(standardised, target)
        weight[:, r], bias[r] = model.coef_[0], model.intercept_[0]
    return LinearProbe(mean, std, weight, bias)


def _dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    total = prediction.sum() + reference.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(prediction, reference).sum() / total)


def probe_encoders(
    encoders: Mapping[str, nn.Module | None],
    training: Sequence[ProbeCase],
    tests: Mapping[str, Sequence[ProbeCase]],
    per_class: int = 4000,
    l2: float = 1.0,
    seed: int = 0,
    roi_size: Sequence[int] = (32, 32, 32),
) -> list[dict]:
    """Fit and score a linear probe on each encoder's frozen features.

    Args:
        encoders: name -> single-channel encoder; ``None`` probes the image intensities alone (the floor).
        training: the labelled cases the probes are fitted on (``per_class`` tumour and as many head voxels each).
        tests: test split name -> cases, each scored whole (voxels outside the head are background).
        per_class: sampled voxels per class and training case.
        l2: inverse of the logistic regressions' ``C``.
        seed: seed of the voxel sampling.
        roi_size: sliding-window size of the feature extraction (the pre-training crop).

    Returns:
        one row per encoder and test split: ``encoder``, ``test_split``, ``cases``, ``features`` and the mean
        ``dice_tc``, ``dice_wt``, ``dice_et`` and ``dice_mean`` over the split's cases.
    """
    rng = np.random.default_rng(seed)
    samples = [sample_probe_voxels(case, per_class, rng) for case in training]
    rows = []
    for name, encoder in encoders.items():
        extractor = None if encoder is None else EncoderFeatures(encoder, roi_size)
        features, targets = [], []
        for case, idx in zip(training, samples):
            shape = case.image.shape[1:]
            features.append(_sample_maps(stage_maps(extractor, case), idx, shape))
            targets.append(case.regions.flatten(1).T.numpy()[idx])
        probe = fit_linear_probe(np.concatenate(features), np.concatenate(targets), l2=l2)
        for split, cases in tests.items():
            scores = []
            for case in cases:
                prediction = (_probe_logits(probe, stage_maps(extractor, case), case.image.shape[1:]) > 0) & case.head
                reference = case.regions.numpy()
                scores.append([_dice(prediction[r].numpy(), reference[r]) for r in range(3)])
            mean = np.mean(scores, axis=0)
            rows.append(
                {
                    "encoder": name,
                    "test_split": split,
                    "cases": len(cases),
                    "features": int(probe.weight.shape[0]),
                    **{f"dice_{region.lower()}": float(mean[i]) for i, region in enumerate(REGION_NAMES)},
                    "dice_mean": float(mean.mean()),
                }
            )
    return rows
