"""Feature consistency between two augmented copies of the same input (BrainMVP fine-tuning)."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["FeatureConsistencyLoss"]


class FeatureConsistencyLoss(_Loss):
    """Mean squared error between the features of two independently augmented copies of a batch.

    BrainMVP ("Multi-modal Vision Pre-training for Medical Image Analysis", Rui et al., CVPR 2025) fine-tunes
    with two copies of each input in which different channels are replaced by distilled modality templates,
    and asks the network to represent both alike. The features can be any activation of the network (the
    deepest encoder features in the paper; the coarsest deep-supervision output in the authors' code).

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (element-wise squared differences).

    Shapes:
        ``input`` and ``target``: ``(B, C[, H, W, D])``, equal shapes; a list or tuple of feature maps
        contributes its last element (the deepest features of an encoder). Returns a scalar, or
        ``(B, C[, H, W, D])`` with ``reduction="none"``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f'reduction must be "mean", "sum" or "none", got {reduction!r}')
        super().__init__(reduction=reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, (list, tuple)):
            input = input[-1]
        if isinstance(target, (list, tuple)):
            target = target[-1]
        if input.shape != target.shape:
            raise ValueError(
                f"features of the two copies differ in shape: {tuple(input.shape)} vs {tuple(target.shape)}"
            )
        diff = (input.float() - target.float()) ** 2
        if self.reduction == "mean":
            return diff.mean()
        if self.reduction == "sum":
            return diff.sum()
        return diff
