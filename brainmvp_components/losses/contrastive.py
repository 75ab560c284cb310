"""Symmetric InfoNCE for BrainMVP's modality-aware contrastive learning."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["InfoNCELoss", "ProjectionHead"]


class ProjectionHead(nn.Sequential):
    """Two-layer MLP projection ``Linear -> ReLU -> Linear`` applied to flattened features.

    Args:
        in_features: size of the flattened input features ``F``.
        hidden: hidden width.
        out: output embedding size.
    """

    def __init__(self, in_features: int, hidden: int = 2048, out: int = 128) -> None:
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def _distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow back to each rank's own slice."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class InfoNCELoss(_Loss):
    """Symmetric InfoNCE over two views of a batch, as in BrainMVP's modality-aware contrastive learning:

        Rui, Shaohao, et al. "Multi-modal Vision Pre-training for Medical Image Analysis."
        Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR), 2025.

    The two views of sample ``i`` (in BrainMVP the deepest encoder features of the template-filled view and of
    the cross-modal view of one case) form the positive pair; the other samples of the batch are negatives.
    Features are flattened to ``(B, F)`` (as in the authors' code), optionally projected, L2-normalised, and
    compared by cosine similarity divided by ``temperature``. The loss is the average of the cross-entropies
    ``a -> b`` (row ``i`` of ``a`` must pick column ``i`` of ``b``) and ``b -> a``.

    Under ``torch.distributed`` (initialised, world size > 1) with ``gather_distributed=True`` the features of
    every rank are gathered, so negatives come from the global batch; gradients flow back to the local features
    through the gather, and DDP's gradient averaging then yields the gradient of the global-batch loss. Every
    rank must pass the same batch size (use a sampler that pads or drops the last batch).

    Args:
        temperature: softmax temperature (the authors use 1.0).
        projection: optional module applied to the flattened ``(B, F)`` features before normalisation, e.g.
            :class:`ProjectionHead`.
        gather_distributed: gather negatives across ranks when running distributed.
        reduction: ``"mean"`` (default) or ``"sum"`` over the local samples, or ``"none"`` for the per-sample
            loss ``(B,)`` (both directions averaged).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        projection: nn.Module | None = None,
        gather_distributed: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f'reduction must be "mean", "sum" or "none", got {reduction!r}')
        self.temperature = float(temperature)
        self.projection = projection
        self.gather_distributed = gather_distributed

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features_a: first view, shape ``B[F...]`` (e.g. ``(B, C, H, W, D)`` feature maps), ``B >= 1``.
            features_b: second view, same shape; sample ``i`` of both is the positive pair.

        Returns:
            Scalar loss (or ``(B,)`` with ``reduction="none"``), computed in float32.

        Raises:
            ValueError: the inputs differ in shape or have no batch dimension.
        """
        if features_a.shape != features_b.shape:
            raise ValueError(
                f"features_a and features_b must have the same shape, got {tuple(features_a.shape)} and "
                f"{tuple(features_b.shape)}"
            )
        if features_a.ndim < 2 or features_a.shape[0] < 1:
            raise ValueError(f"features must have shape (B, F...) with B >= 1, got {tuple(features_a.shape)}")
        a = features_a.flatten(1)
        b = features_b.flatten(1)
        if self.projection is not None:
            a, b = self.projection(a), self.projection(b)
        a = F.normalize(a.float(), dim=1)
        b = F.normalize(b.float(), dim=1)

        rank, world = _distributed_world()
        offset = 0
        all_a, all_b = a, b
        if self.gather_distributed and world > 1:
            all_a, all_b = _gather_with_grad(a), _gather_with_grad(b)
            offset = rank * a.shape[0]
        targets = torch.arange(a.shape[0], device=a.device) + offset
        logits_ab = a @ all_b.T / self.temperature  # (B, B * world)
        logits_ba = b @ all_a.T / self.temperature
        loss_ab = F.cross_entropy(logits_ab, targets, reduction="none")
        loss_ba = F.cross_entropy(logits_ba, targets, reduction="none")
        per_sample = 0.5 * (loss_ab + loss_ba)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample
