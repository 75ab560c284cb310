"""UniUNet: the downstream segmentation network BrainMVP fine-tunes (encoder + UNETR-style decoder).

The encoder's five feature maps feed a decoder of MONAI ``UnetrUpBlock``s with skip connections; two
1x1x1 heads on intermediate decoder outputs give deep-supervision logits. Module and parameter names
follow the authors' fine-tuning network, so a state dict of theirs loads as it is (see
:mod:`brainmvp_components.weights.official`).
"""

from __future__ import annotations

from typing import Union

import torch
from monai.networks.blocks import UnetOutBlock, UnetrUpBlock
from torch import nn

from brainmvp_components.networks.freezing import EncoderFreezing
from brainmvp_components.networks.uniformer import UNIFORMER_PRESETS, PatchEmbed3D, UniFormer3D

__all__ = ["UniUNetDecoder", "UniUNet", "brainmvp_uniunet"]


class UniUNetDecoder(nn.Module):
    """UNETR-style decoder over five encoder features ``[x0, x1, x2, x3, x4]`` (input axis order).

    ``proj1`` embeds the raw input ``x0`` (``Conv3d`` 3x3x3 + channel LayerNorm) as the full-resolution skip,
    in the encoder's ``(D, H, W)`` working order as the authors do;
    ``decoder5..decoder2`` are ``UnetrUpBlock`` (transposed-conv upsampling by 2, concatenation with the
    skip, residual 3x3x3 block, instance norm); ``out`` is a ``UnetOutBlock``.

    Args:
        in_channels: channels of ``x0`` (the network input).
        feature_channels: the encoder's stage widths ``(c1, c2, c3, c4)``.
        out_channels: output classes.
        norm_name: normalisation of the up blocks.
        res_block: residual convolution blocks in the up blocks.

    :meth:`forward` returns ``(logits, d4, d3)``: logits ``(B, out_channels, H, W, D)``, the ``decoder4``
    output ``(B, c2, H/4, W/4, D/4)`` and the ``decoder3`` output ``(B, c1, H/2, W/2, D/2)``.
    """

    def __init__(
        self,
        in_channels: int,
        feature_channels: tuple[int, int, int, int] | list[int],
        out_channels: int,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
    ) -> None:
        super().__init__()
        if len(feature_channels) != 4:
            raise ValueError(f"UniUNetDecoder needs four encoder stage widths, got {feature_channels}")
        c1, c2, c3, c4 = (int(c) for c in feature_channels)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(
                spatial_dims=3,
                in_channels=cin,
                out_channels=cout,
                kernel_size=3,
                upsample_kernel_size=2,
                norm_name=norm_name,
                res_block=res_block,
            )

        self.decoder5 = up(c4, c3)
        self.decoder4 = up(c3, c2)
        self.decoder3 = up(c2, c1)
        self.decoder2 = up(c1, c1)
        self.proj1 = PatchEmbed3D(in_channels, c1, kernel_size=3, stride=1, padding=1)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=c1, out_channels=out_channels)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0, x1, x2, x3, x4 = features[0], features[1], features[2], features[3], features[4]
        d5 = self.decoder5(x4, x3)
        d4 = self.decoder4(d5, x2)
        d3 = self.decoder3(d4, x1)
        # the authors embed the raw input in the encoder's (D, H, W) working order (see UniFormer3D); doing the same
        # keeps their fine-tuned proj1 kernels valid as they are
        skip = self.proj1(x0.permute(0, 1, 4, 2, 3)).permute(0, 1, 3, 4, 2)
        d2 = self.decoder2(d3, skip)
        return self.out(d2), d4, d3


class UniUNet(EncoderFreezing, nn.Module):
    """BrainMVP's downstream segmentation network: an encoder, :class:`UniUNetDecoder` and deep supervision.

    Args:
        encoder: returns five feature maps ``[x0, ..., x4]`` in the input's axis order, ``x_i`` at
            ``1 / 2^i`` resolution, and has ``out_channels`` (its four stage widths), e.g.
            :class:`~brainmvp_components.networks.uniformer.UniFormer3D` or
            :class:`~brainmvp_components.networks.backbones.SwinEncoder`.
        in_channels: input channels (modalities). Defaults to ``encoder.in_channels``; a disagreement
            with it is an error.
        out_channels: output channels (e.g. 3 sigmoid regions TC, WT, ET).
        deep_supervision: in training mode, also return the two deep-supervision logits.
        norm_name: normalisation of the decoder's up blocks.
        res_block: residual convolution blocks in the decoder's up blocks.

    Input ``(B, in_channels, H, W, D)`` with sides divisible by 16.

    - ``eval()`` mode, or ``deep_supervision=False``: returns the logits ``(B, out_channels, H, W, D)``
      (the form sliding-window inference and TorchScript export need).
    - training mode with ``deep_supervision=True``: returns the list ``[logits, ds0, ds1]``, all at full
      resolution ``(B, out_channels, H, W, D)``: ``ds0 = up4(ms_out[0](decoder4 output))`` and
      ``ds1 = up2(ms_out[1](decoder3 output))``, trilinear upsampling. This is the list form
      ``monai.losses.DeepSupervisionLoss`` takes (highest weight on the first element).

    The upsampled deep-supervision logits are the outputs of the parameter-free modules ``ms_up[0]`` and
    ``ms_up[1]``, so a forward hook can capture them by name.

    ``freeze_encoder()`` (:class:`~brainmvp_components.networks.freezing.EncoderFreezing`) trains the decoder
    and heads on frozen encoder features.

    State-dict layout (as the authors'): ``encoder.*``, ``decoder.decoder{5,4,3,2}.*``, ``decoder.proj1.*``,
    ``decoder.out.*``, ``ms_out.{0,1}.{weight,bias}``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        in_channels: int | None = None,
        out_channels: int = 3,
        deep_supervision: bool = True,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
    ) -> None:
        super().__init__()
        widths = getattr(encoder, "out_channels", None)
        if not isinstance(widths, (tuple, list)) or len(widths) != 4:
            raise ValueError("UniUNet needs an encoder with `out_channels` listing its four stage widths")
        encoder_in = getattr(encoder, "in_channels", None)
        if in_channels is None:
            if encoder_in is None:
                raise ValueError("in_channels is required when the encoder has no `in_channels` attribute")
            in_channels = int(encoder_in)
        elif encoder_in is not None and int(encoder_in) != int(in_channels):
            raise ValueError(f"in_channels={in_channels} but the encoder was built for {encoder_in} input channels")
        c1, c2 = int(encoder.out_channels[0]), int(encoder.out_channels[1])
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.deep_supervision = deep_supervision
        self.encoder = encoder
        self.decoder = UniUNetDecoder(self.in_channels, list(encoder.out_channels), out_channels, norm_name, res_block)
        self.ms_out = nn.ModuleList([nn.Conv3d(c2, out_channels, kernel_size=1), nn.Conv3d(c1, out_channels, 1)])
        self.ms_up = nn.ModuleList(
            [
                nn.Upsample(scale_factor=4.0, mode="trilinear", align_corners=False),
                nn.Upsample(scale_factor=2.0, mode="trilinear", align_corners=False),
            ]
        )

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:  # noqa: UP007
        if not torch.jit.is_tracing() and (x.ndim != 5 or x.shape[1] != self.in_channels):
            raise ValueError(f"UniUNet expects (B, {self.in_channels}, H, W, D), got shape {list(x.shape)}")
        features = self.encoder(x)
        logits, d4, d3 = self.decoder(features)
        if not (self.training and self.deep_supervision):
            return logits
        ds0 = self.ms_up[0](self.ms_out[0](d4))
        ds1 = self.ms_up[1](self.ms_out[1](d3))
        return [logits, ds0, ds1]


def brainmvp_uniunet(
    preset: str = "small",
    in_channels: int = 4,
    out_channels: int = 3,
    deep_supervision: bool = True,
    **encoder_kwargs,
) -> UniUNet:
    """Build a :class:`UniUNet` on a :class:`UniFormer3D` of a named size (``"small"`` or ``"tiny"``).

    ``encoder_kwargs`` override the preset (``use_checkpoint``, ``drop_path_rate``, ...).
    """
    if preset not in UNIFORMER_PRESETS:
        raise ValueError(f"unknown UniFormer preset {preset!r}; choose one of {sorted(UNIFORMER_PRESETS)}")
    encoder = UniFormer3D(**{**UNIFORMER_PRESETS[preset], **encoder_kwargs, "in_channels": in_channels})
    return UniUNet(encoder, in_channels=in_channels, out_channels=out_channels, deep_supervision=deep_supervision)
