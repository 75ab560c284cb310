"""A single-channel encoder applied to every modality of a multi-channel input, its features fused per stage.

BrainMVP pre-trains its encoder on one modality at a time. The authors' downstream networks read all modalities
through one multi-channel stem, freshly initialised, so the pre-trained layers behind it first see features of an
untrained mixture of the contrasts. :class:`ModalityWiseEncoder` instead runs the pre-trained single-channel
encoder on each modality, as it was trained, with shared weights, and fuses the ``C`` feature maps of every stage
with a ``1x1x1`` convolution initialised to their mean. Any encoder that returns ``[x0, x1, ..., xn]`` (the input,
then its stages) and lists its stage widths in ``out_channels`` can be wrapped, so UniUNet and the classifier take
it in place of a multi-channel encoder.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ModalityWiseEncoder"]


class ModalityWiseEncoder(nn.Module):
    """Shared single-channel encoding of each input channel, fused per stage.

    Args:
        encoder: a single-channel encoder (``in_channels == 1``) returning ``[x0, x1, ..., xn]`` with
            ``out_channels`` listing the widths of ``x1..xn``, such as
            :class:`~brainmvp_components.networks.uniformer.UniFormer3D`.
        in_channels: number of modalities ``C``.

    ``forward(x (B, C, H, W, D))`` returns ``[x, f1, ..., fn]`` where ``f_i (B, out_channels[i-1], ...)`` is the
    fusion of the ``C`` maps ``encoder(x[:, c:c+1])[i]``: a ``1x1x1`` convolution over their concatenation, which
    starts as their mean (so an untrained fusion passes the pre-trained features on unchanged when the modalities
    agree). The encoder runs once on the ``B * C`` single-channel volumes. State-dict keys: ``encoder.*`` (the
    shared encoder, loadable from a pre-training's ``encoder.pt`` as it is) and ``fuse.<i>.*``.
    """

    def __init__(self, encoder: nn.Module, in_channels: int) -> None:
        super().__init__()
        widths = getattr(encoder, "out_channels", None)
        if not isinstance(widths, (tuple, list)) or not widths:
            raise ValueError("ModalityWiseEncoder needs an encoder with `out_channels` listing its stage widths")
        if int(getattr(encoder, "in_channels", 1)) != 1:
            raise ValueError(f"the shared encoder must read one channel, got in_channels={encoder.in_channels}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        self.encoder = encoder
        self.in_channels = int(in_channels)
        self.out_channels = tuple(int(w) for w in widths)
        self.fuse = nn.ModuleList(nn.Conv3d(self.in_channels * w, w, kernel_size=1) for w in self.out_channels)
        with torch.no_grad():
            for conv, width in zip(self.fuse, self.out_channels):
                mean = torch.eye(width).repeat(1, self.in_channels) / self.in_channels
                conv.weight.copy_(mean.view(width, self.in_channels * width, 1, 1, 1))
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ModalityWiseEncoder expects (B, {self.in_channels}, H, W, D), got shape {list(x.shape)}"
            )
        batch = x.shape[0]
        stages = self.encoder(x.reshape(batch * self.in_channels, 1, *x.shape[2:]))[1:]
        fused = [
            conv(stage.reshape(batch, self.in_channels * stage.shape[1], *stage.shape[2:]))
            for conv, stage in zip(self.fuse, stages)
        ]
        return [x, *fused]
