"""Region-based segmentation loss with deep supervision (BrainMVP fine-tuning).

BraTS regions (tumour core, whole tumour, enhancing tumour) overlap, so each is an independent sigmoid output.
The loss per output scale is ``dice_weight * soft Dice + bce_weight * BCE`` averaged over regions and batch
(MONAI :class:`~monai.losses.DiceCELoss` with ``sigmoid=True``, whose cross-entropy term is
``BCEWithLogitsLoss`` for multi-label targets), summed over the deep-supervision outputs with equal weights by default
(MONAI :class:`~monai.losses.DeepSupervisionLoss`).
"""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

__all__ = ["DeepSupervisionDiceBCELoss"]


class _RegionDiceBCE(DiceCELoss):
    """:class:`DiceCELoss` that always uses the binary cross-entropy (one sigmoid per region)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape != target.shape:
            raise ValueError(f"logits {tuple(input.shape)} and region targets {tuple(target.shape)} differ in shape")
        return self.lambda_dice * self.dice(input, target) + self.lambda_ce * self.bce(input, target)


class DeepSupervisionDiceBCELoss(DeepSupervisionLoss):
    """``dice_weight * Dice + bce_weight * BCE`` per region with sigmoid outputs, summed over deep-supervision scales.

    Args:
        dice_weight: weight of the soft Dice term (0.7 in BrainMVP).
        bce_weight: weight of the binary cross-entropy term (0.3 in BrainMVP).
        scale_weights: weights of the deep-supervision outputs, full resolution first; ``None`` uses
            ``weight_mode``.
        weight_mode: weights of the outputs when ``scale_weights`` is ``None``: ``"same"`` (1 each, BrainMVP),
            ``"exp"`` (1, 0.5, 0.25, ...: the coarse outputs guide rather than dominate) or ``"two"``; see
            :class:`~monai.losses.DeepSupervisionLoss`.
        batch_dice: compute the soft Dice over the whole batch per region instead of per sample (MONAI's
            ``batch=True``). A crop without tumour then no longer yields a Dice of 0 or 1 from a handful of
            voxels, which steadies training on small, tumour-centred crops.
        smooth_nr, smooth_dr: Dice smoothing terms, see :class:`~monai.losses.DiceLoss`.

    Shapes:
        ``input``: logits ``(B, R, H, W, D)`` or a list of such tensors (full-resolution output first; a lower
        resolution output gets a nearest-neighbour downsampled target). ``target``: ``(B, R, H, W, D)`` binary
        region masks (e.g. from ``BratsLabelToRegionsd``).
    """

    def __init__(
        self,
        dice_weight: float = 0.7,
        bce_weight: float = 0.3,
        scale_weights: list[float] | None = None,
        weight_mode: str = "same",
        batch_dice: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        region_loss = _RegionDiceBCE(
            sigmoid=True,
            lambda_dice=dice_weight,
            lambda_ce=bce_weight,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch_dice,
        )
        super().__init__(region_loss, weight_mode=weight_mode, weights=scale_weights)
