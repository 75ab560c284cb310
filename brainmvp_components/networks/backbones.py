"""Alternative encoders with the five-feature interface of :class:`~.uniformer.UniFormer3D`.

Any module whose ``forward(x (B, C, H, W, D))`` returns ``[x0, x1, x2, x3, x4]`` (``x0`` the input, ``x_i`` at
``1 / 2^i`` resolution in the input's axis order) and which lists its four stage widths in ``out_channels``
can drive :class:`~.uniunet.UniUNet` and the pre-training model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

__all__ = ["SwinEncoder"]


class SwinEncoder(nn.Module):
    """MONAI's 3-D Swin transformer (the SwinUNETR encoder) with the five-feature encoder interface.

    Three Swin stages after a 2x2x2 patch embedding give features at 1/2, 1/4, 1/8 and 1/16 resolution with
    ``(feature_size, 2, 4, 8 x feature_size)`` channels: the patch embedding and the stage outputs (after
    patch merging), instance-normalised as SwinUNETR does. SwinUNETR's fourth stage (1/32) is not built.
    The transformer is held as ``swinViT``, the attribute name SwinUNETR uses, so the ``swinViT.*`` weights
    of a SwinUNETR checkpoint (stages 1-3) fit.

    Args:
        in_channels: input channels.
        feature_size: embedding width (divisible by 12 in SwinUNETR's recipes).
        depths: Swin blocks per stage (three stages).
        num_heads: attention heads per stage.
        window_size: local window size.
        drop_path_rate: stochastic depth.
        use_checkpoint: activation checkpointing in the Swin blocks.

    Input ``(B, in_channels, H, W, D)`` with sides divisible by 16.
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12),
        window_size: int = 7,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != 3 or len(num_heads) != 3:
            raise ValueError(f"SwinEncoder builds three stages; got depths={depths}, num_heads={num_heads}")
        self.in_channels = int(in_channels)
        self.out_channels: tuple[int, ...] = tuple(feature_size * 2**i for i in range(4))
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(window_size,) * 3,
            patch_size=(2, 2, 2),
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            drop_path_rate=drop_path_rate,
            use_checkpoint=use_checkpoint,
            spatial_dims=3,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.in_channels or any(s % 16 != 0 for s in x.shape[2:]):
            raise ValueError(
                f"SwinEncoder expects (B, {self.in_channels}, H, W, D) with sides divisible by 16, "
                f"got shape {list(x.shape)}"
            )
        swin = self.swinViT
        h = swin.pos_drop(swin.patch_embed(x))
        features = [x, swin.proj_out(h, True)]
        for stage in (swin.layers1, swin.layers2, swin.layers3):
            h = stage[0](h.contiguous())
            features.append(swin.proj_out(h, True))
        return features
