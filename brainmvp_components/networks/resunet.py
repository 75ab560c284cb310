"""ResUNet: the convolutional variant of BrainMVP (the authors' ``BrainMVP_unet.pt``).

A small residual 3-D CNN: pre-activation residual blocks (GroupNorm, ReLU, 3x3x3 convolution, twice) at four
resolutions, strided 3x3x3 convolutions between them, and a mirror decoder (1x1x1 channel reduction, nearest
upsampling by 2, one residual block per level). In pre-training the decoder runs without skip connections and
reconstructs the masked modality; for segmentation the encoder's features at each level are added to the
decoder's (additive skips), with two deep-supervision heads as in
:class:`~brainmvp_components.networks.uniunet.UniUNet`.

Module and parameter names are those of the authors' pre-training model, one level down: their ``conv1a.*`` is
``encoder.conv1a.*`` here, their ``up4conva.*`` is ``decoder.up4conva.*`` (the key map of
:mod:`brainmvp_components.weights.official`).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

__all__ = ["ResidualBlock3D", "ResUNetEncoder", "ResUNetDecoder", "ResUNet", "brainmvp_resunet"]


class ResidualBlock3D(nn.Module):
    """Pre-activation residual block: ``x + conv2(relu(gn2(conv1(relu(gn1(x))))))``.

    Args:
        channels: input and output channels.
        num_groups: GroupNorm groups (must divide ``channels``).

    Input and output ``(B, channels, H, W, D)``. Parameters: ``gn1``, ``conv1`` (3x3x3, bias), ``gn2``, ``conv2``.
    """

    def __init__(self, channels: int, num_groups: int = 8) -> None:
        super().__init__()
        if channels % num_groups:
            raise ValueError(f"num_groups={num_groups} does not divide channels={channels}")
        self.gn1 = nn.GroupNorm(num_groups, channels)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.gn2 = nn.GroupNorm(num_groups, channels)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act(self.gn1(x)))
        y = self.conv2(self.act(self.gn2(y)))
        return x + y


class ResUNetEncoder(nn.Module):
    """The encoder of BrainMVP's UNet variant: four levels of residual blocks, widths ``C, 2C, 4C, 8C``.

    - level 1: ``conv1a`` (3x3x3, in -> C), ``conv1b``; output ``c1`` ``(B, C, H, W, D)``;
    - level 2: ``ds1`` (3x3x3, stride 2), ``conv2a``, ``conv2b``; ``c2`` ``(B, 2C, H/2, W/2, D/2)``;
    - level 3: ``ds2``, ``conv3a``, ``conv3b``; ``c3`` ``(B, 4C, H/4, W/4, D/4)``;
    - level 4: ``ds3``, ``conv4a`` ... ``conv4d``; ``c4`` ``(B, 8C, H/8, W/8, D/8)``.

    Args:
        in_channels: input channels (1 in pre-training: one modality at a time).
        init_channels: ``C``, the width of the first level (32 in the authors' release).
        num_groups: GroupNorm groups of every residual block.

    :meth:`forward` takes ``(B, in_channels, H, W, D)`` with sides divisible by 8 and returns ``[c1, c2, c3, c4]``;
    ``c4`` is the representation BrainMVP's contrastive task compares. ``out_channels`` is ``(C, 2C, 4C, 8C)``.
    """

    def __init__(self, in_channels: int = 1, init_channels: int = 32, num_groups: int = 8) -> None:
        super().__init__()
        c = int(init_channels)
        self.in_channels = int(in_channels)
        self.out_channels = (c, 2 * c, 4 * c, 8 * c)

        def down(cin: int, cout: int) -> nn.Conv3d:
            return nn.Conv3d(cin, cout, kernel_size=3, stride=2, padding=1)

        self.conv1a = nn.Conv3d(self.in_channels, c, kernel_size=3, padding=1)
        self.conv1b = ResidualBlock3D(c, num_groups)
        self.ds1 = down(c, 2 * c)
        self.conv2a = ResidualBlock3D(2 * c, num_groups)
        self.conv2b = ResidualBlock3D(2 * c, num_groups)
        self.ds2 = down(2 * c, 4 * c)
        self.conv3a = ResidualBlock3D(4 * c, num_groups)
        self.conv3b = ResidualBlock3D(4 * c, num_groups)
        self.ds3 = down(4 * c, 8 * c)
        self.conv4a = ResidualBlock3D(8 * c, num_groups)
        self.conv4b = ResidualBlock3D(8 * c, num_groups)
        self.conv4c = ResidualBlock3D(8 * c, num_groups)
        self.conv4d = ResidualBlock3D(8 * c, num_groups)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.jit.is_tracing() and (
            x.ndim != 5 or x.shape[1] != self.in_channels or any(int(s) % 8 for s in x.shape[2:])
        ):
            raise ValueError(
                f"ResUNetEncoder expects (B, {self.in_channels}, H, W, D) with sides divisible by 8, "
                f"got shape {list(x.shape)}"
            )
        c1 = self.conv1b(self.conv1a(x))
        c2 = self.conv2b(self.conv2a(self.ds1(c1)))
        c3 = self.conv3b(self.conv3a(self.ds2(c2)))
        c4 = self.conv4d(self.conv4c(self.conv4b(self.conv4a(self.ds3(c3)))))
        return [c1, c2, c3, c4]


class ResUNetDecoder(nn.Module):
    """Mirror decoder of :class:`ResUNetEncoder`: per level a 1x1x1 convolution halving the channels
    (``upNconva``), nearest upsampling by 2 (``upN``), optionally the encoder feature of that level added, and a
    residual block (``upNconvb``); ``up1conv`` (1x1x1) gives the output.

    Args:
        init_channels: ``C`` of the encoder.
        out_channels: output channels (1 for the pre-training reconstruction, the classes for segmentation).
        num_groups: GroupNorm groups of the residual blocks.
        skip_connections: add ``c3``, ``c2``, ``c1`` to the upsampled features (segmentation). ``False`` decodes
            ``c4`` alone, as BrainMVP's pre-training does.

    :meth:`forward` takes the encoder's ``[c1, c2, c3, c4]`` and returns ``(out, u4, u3)``: ``out``
    ``(B, out_channels, H, W, D)``, ``u4`` ``(B, 4C, H/4, W/4, D/4)`` and ``u3`` ``(B, 2C, H/2, W/2, D/2)``.
    """

    def __init__(
        self, init_channels: int = 32, out_channels: int = 1, num_groups: int = 8, skip_connections: bool = True
    ) -> None:
        super().__init__()
        c = int(init_channels)
        self.skip_connections = bool(skip_connections)
        self.up4conva = nn.Conv3d(8 * c, 4 * c, kernel_size=1)
        self.up4 = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.up4convb = ResidualBlock3D(4 * c, num_groups)
        self.up3conva = nn.Conv3d(4 * c, 2 * c, kernel_size=1)
        self.up3 = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.up3convb = ResidualBlock3D(2 * c, num_groups)
        self.up2conva = nn.Conv3d(2 * c, c, kernel_size=1)
        self.up2 = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.up2convb = ResidualBlock3D(c, num_groups)
        self.up1conv = nn.Conv3d(c, int(out_channels), kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c1, c2, c3, c4 = features[0], features[1], features[2], features[3]
        u4 = self.up4(self.up4conva(c4))
        if self.skip_connections:
            u4 = u4 + c3
        u4 = self.up4convb(u4)
        u3 = self.up3(self.up3conva(u4))
        if self.skip_connections:
            u3 = u3 + c2
        u3 = self.up3convb(u3)
        u2 = self.up2(self.up2conva(u3))
        if self.skip_connections:
            u2 = u2 + c1
        u2 = self.up2convb(u2)
        return self.up1conv(u2), u4, u3


class ResUNet(nn.Module):
    """BrainMVP's UNet variant as one network: :class:`ResUNetEncoder`, :class:`ResUNetDecoder`, deep supervision.

    Args:
        in_channels: input channels (modalities).
        out_channels: output channels (e.g. 3 sigmoid regions TC, WT, ET; 1 for the pre-training reconstruction).
        init_channels: width ``C`` of the first level (32 in the authors' release).
        num_groups: GroupNorm groups.
        deep_supervision: in training mode, also return the two deep-supervision logits.
        skip_connections: additive skips in the decoder (segmentation). With ``False`` and ``in_channels =
            out_channels = 1`` the network computes the authors' pre-training reconstruction.

    Input ``(B, in_channels, H, W, D)`` with sides divisible by 8.

    - ``eval()`` mode, or ``deep_supervision=False``: the output ``(B, out_channels, H, W, D)``.
    - training mode with ``deep_supervision=True``: ``[out, ds0, ds1]``, all ``(B, out_channels, H, W, D)``:
      ``ds0 = ms_up[0](ms_out[0](u4))`` (x4 trilinear) and ``ds1 = ms_up[1](ms_out[1](u3))`` (x2), the list
      ``monai.losses.DeepSupervisionLoss`` takes. The same names as in ``UniUNet`` (``ms_out``, ``ms_up``), so
      the segmentation bundle's handlers and consistency loss work unchanged.

    State dict: ``encoder.*``, ``decoder.*`` (the authors' pre-training names below those prefixes) and, with
    ``deep_supervision=True`` only, ``ms_out.{0,1}.{weight,bias}``; so the pre-training form
    (``ResUNet(1, 1, deep_supervision=False, skip_connections=False)``) holds exactly the authors' weights.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        init_channels: int = 32,
        num_groups: int = 8,
        deep_supervision: bool = True,
        skip_connections: bool = True,
    ) -> None:
        super().__init__()
        c = int(init_channels)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.deep_supervision = bool(deep_supervision)
        self.encoder = ResUNetEncoder(self.in_channels, c, num_groups)
        self.decoder = ResUNetDecoder(c, self.out_channels, num_groups, skip_connections)
        heads = [nn.Conv3d(4 * c, self.out_channels, 1), nn.Conv3d(2 * c, self.out_channels, 1)]
        self.ms_out = nn.ModuleList(heads if self.deep_supervision else [])
        self.ms_up = nn.ModuleList(
            [
                nn.Upsample(scale_factor=4.0, mode="trilinear", align_corners=False),
                nn.Upsample(scale_factor=2.0, mode="trilinear", align_corners=False),
            ]
        )

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:  # noqa: UP007
        out, u4, u3 = self.decoder(self.encoder(x))
        if not (self.training and self.deep_supervision):
            return out
        outputs = [out]
        for i, (head, up) in enumerate(zip(self.ms_out, self.ms_up)):
            outputs.append(up(head(u4 if i == 0 else u3)))
        return outputs


def brainmvp_resunet(
    in_channels: int = 4, out_channels: int = 3, init_channels: int = 32, deep_supervision: bool = True
) -> ResUNet:
    """A segmentation :class:`ResUNet` (additive skips) of the authors' width, for bundle configs."""
    return ResUNet(
        in_channels=in_channels,
        out_channels=out_channels,
        init_channels=init_channels,
        deep_supervision=deep_supervision,
        skip_connections=True,
    )
