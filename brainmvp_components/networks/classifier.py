"""Disease classification from a BrainMVP-pre-trained encoder: global pooling and a linear head.

The paper evaluates its encoder on ADNI (Alzheimer's disease vs cognitively normal) and BraTS 2018 (HGG vs LGG)
with the pre-trained encoder, global average pooling of the deepest features and a linear classifier. The same
network serves both protocols: fine-tuning (every weight trains, optionally with layer-wise learning-rate decay,
:meth:`BrainMVPClassifier.layerwise_lr_groups`) and linear probing (:meth:`BrainMVPClassifier.freeze_encoder`).
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from brainmvp_components.networks.freezing import EncoderFreezing

__all__ = ["BrainMVPClassifier"]

logger = logging.getLogger(__name__)

_STAGE_PATTERN = re.compile(r"^(?:patch_embed|blocks|stages?|layers?)(\d+)$")


class BrainMVPClassifier(EncoderFreezing, nn.Module):
    """Pre-trained encoder, global average pooling of its deepest features and a linear head.

    Args:
        encoder: a feature encoder whose ``forward(x)`` returns a list of feature maps, deepest last, with an
            ``out_channels`` attribute listing their channels (deepest last), such as
            :class:`~brainmvp_components.networks.uniformer.UniFormer3D` (``[x0, ..., x4]``).
        num_classes: number of classes (2 for AD vs CN or HGG vs LGG).
        dropout: dropout probability on the pooled features before the head.
        freeze_batch_norm: keep the encoder's batch normalisation layers in eval mode while the network trains, so
            they normalise with their running statistics and do not update them. Batch statistics of the few cases
            a classification batch holds are noise, and with global pooling after the encoder's final
            ``BatchNorm3d`` they couple the cases of a batch: with two cases per batch their pooled features
            mirror each other about the norm's bias, so the head sees each case only relative to its batch mate.

    Input ``(B, C, H, W, D)``; output logits ``(B, num_classes)``. The encoder is the submodule ``encoder``, so
    :func:`~brainmvp_components.weights.pretrained.load_pretrained_encoder` and the consistency trainer's
    ``feature_layer="encoder"`` find it by name. Its ``freeze_encoder()`` (from
    :class:`~brainmvp_components.networks.freezing.EncoderFreezing`) is linear probing: only the head trains.

    Example::

        net = BrainMVPClassifier(uniformer_small(in_channels=1), num_classes=2)
        logits = net(torch.rand(2, 1, 96, 96, 96))  # (2, 2)
    """

    def __init__(
        self, encoder: nn.Module, num_classes: int = 2, dropout: float = 0.0, freeze_batch_norm: bool = False
    ) -> None:
        super().__init__()
        channels = getattr(encoder, "out_channels", None)
        if channels is None:
            raise ValueError(f"the encoder ({type(encoder).__name__}) needs an `out_channels` attribute")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(int(channels[-1]), self.num_classes)
        self.freeze_batch_norm = bool(freeze_batch_norm)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_batch_norm:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for ``x (B, C, H, W, D)``."""
        deepest = self.encoder(x)[-1]
        pooled = deepest.flatten(2).mean(dim=2)  # global average pooling: (B, channels)
        return self.head(self.dropout(pooled))

    # ------------------------------------------------------------------ protocols
    def encoder_stage(self, name: str) -> int:
        """Stage (1-based, 1 = input stem) of the encoder parameter ``name`` (relative to the encoder).

        Parameters under a top-level module named ``patch_embed<i>``, ``blocks<i>``, ``stage<i>`` or ``layer<i>``
        belong to stage ``i``; others (such as UniFormer's final ``norm``) to the deepest stage.
        """
        match = _STAGE_PATTERN.match(name.split(".", 1)[0])
        num_stages = len(self.encoder.out_channels)
        return min(int(match.group(1)), num_stages) if match else num_stages

    def layerwise_lr_groups(self, base_lr: float, decay: float = 1.0) -> list[dict]:
        """Optimizer parameter groups with layer-wise learning-rate decay.

        The head trains at ``base_lr``, the deepest encoder stage at ``base_lr * decay``, the one before at
        ``base_lr * decay**2``, down to the input stem at ``base_lr * decay**num_stages``: features closer to the
        input, more general, move less. ``decay=1`` gives every parameter ``base_lr``. Frozen parameters
        (``requires_grad=False``, e.g. after :meth:`freeze_encoder`) are left out.

        Returns:
            A list of ``{"params": [...], "lr": float, "name": str}`` for ``torch.optim`` optimizers, stem
            first, head last; empty groups are omitted.
        """
        if base_lr <= 0 or not 0.0 < decay <= 1.0:
            raise ValueError(f"need base_lr > 0 and 0 < decay <= 1, got base_lr={base_lr}, decay={decay}")
        num_stages = len(self.encoder.out_channels)
        stages: list[list[nn.Parameter]] = [[] for _ in range(num_stages)]
        for name, param in self.encoder.named_parameters():
            if param.requires_grad:
                stages[self.encoder_stage(name) - 1].append(param)
        groups = [
            {"params": params, "lr": base_lr * decay ** (num_stages - i), "name": f"encoder.stage{i + 1}"}
            for i, params in enumerate(stages)
            if params
        ]
        rest = [p for name, p in self.named_parameters() if not name.startswith("encoder.") and p.requires_grad]
        if rest:
            groups.append({"params": rest, "lr": base_lr, "name": "head"})
        return groups
