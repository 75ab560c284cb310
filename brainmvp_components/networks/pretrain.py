"""BrainMVP pre-training network: UniFormer encoder, skip-free reconstruction decoder and modality templates.

Pre-training reconstructs a single-modality crop from a block-masked view of it (masked blocks filled with
the learnable modality template, or with another modality of the same case). The decoder deliberately has
no skip connections, as in the authors' code: every voxel of the reconstruction has to come through the
deepest features, which are also the features the contrastive loss compares. The masking and filling
happen outside the network (:mod:`brainmvp_components.transforms.masking`, the pre-training engine); the templates
are held here so that one state dict carries everything pre-training learns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, get_conv_layer
from torch import nn

from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE, BRATS_ATLAS_SHAPE
from brainmvp_components.data.modalities import CANONICAL_MODALITIES
from brainmvp_components.networks.uniformer import UNIFORMER_PRESETS, UniFormer3D

__all__ = ["UpsampleStage", "PretrainDecoder", "BrainMVPPretrainModel", "brainmvp_pretrain_model"]


class UpsampleStage(nn.Module):
    """One decoder stage of the pre-training decoder: a bias-free ``ConvTranspose3d`` (kernel 2, stride 2).

    The attribute name ``transp_conv`` (a MONAI ``Convolution`` holding ``conv``) matches the
    ``decoderN.transp_conv.conv.weight`` keys of the authors' checkpoints and of MONAI's ``UnetrUpBlock``.
    Shapes: ``(B, in_channels, S1, S2, S3) -> (B, out_channels, 2 S1, 2 S2, 2 S3)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.transp_conv = get_conv_layer(
            3, in_channels, out_channels, kernel_size=2, stride=2, conv_only=True, is_transposed=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transp_conv(x)


class PretrainDecoder(nn.Module):
    """Skip-free reconstruction decoder: four transposed convolutions and a 1x1x1 output convolution.

    ``decoder5`` (``dims[3] -> dims[2]``), ``decoder4`` (``dims[2] -> dims[1]``), ``decoder3``
    (``dims[1] -> dims[0]``), ``decoder2`` (``dims[0] -> dims[0]``), each doubling every side, then
    ``out_1`` (MONAI ``UnetOutBlock``, ``dims[0] -> out_channels`` with bias). There are no activations
    between the stages, exactly as in the authors' pre-training model.

    Because every stage is linear, :meth:`forward` applies them as one: :meth:`composed_kernel` multiplies the
    four ``2^3`` kernels and the output weights into a single ``16^3`` kernel, and each ``x4`` voxel becomes its
    ``16^3`` output block by one matrix product. The result equals the stage-by-stage one up to rounding, with the
    same parameters and gradients, but the full-resolution ``dims[0]``-channel tensors that the stages would
    create (about 0.9 GB per 96^3 UniFormer-S crop, kept again for the backward pass) never exist, and the work
    of the finest stage (7 of the decoder's 11 GFLOP per 96^3 crop) is gone.

    The authors' decoder object also owns ``decoderN.conv_block.*`` and ``proj1.*`` weights that its
    pre-training forward never uses; they are left out here (so distributed training sees no unused
    parameters) and :func:`brainmvp_components.weights.official.load_official_checkpoint` skips them.

    Args:
        dims: the encoder's stage widths (``encoder.out_channels``).
        out_channels: reconstructed channels.

    Shapes: ``(B, dims[3], h, w, d) -> (B, out_channels, 16 h, 16 w, 16 d)``.
    """

    def __init__(self, dims: Sequence[int] = (64, 128, 320, 512), out_channels: int = 1) -> None:
        super().__init__()
        if len(dims) != 4:
            raise ValueError(f"PretrainDecoder needs the four encoder stage widths, got dims={dims}")
        self.dims = tuple(int(d) for d in dims)
        self.decoder5 = UpsampleStage(self.dims[3], self.dims[2])
        self.decoder4 = UpsampleStage(self.dims[2], self.dims[1])
        self.decoder3 = UpsampleStage(self.dims[1], self.dims[0])
        self.decoder2 = UpsampleStage(self.dims[0], self.dims[0])
        self.out_1 = UnetOutBlock(3, self.dims[0], out_channels)

    def forward(self, x4: torch.Tensor) -> torch.Tensor:
        if x4.ndim != 5 or x4.shape[1] != self.dims[3]:
            raise ValueError(f"PretrainDecoder expects (B, {self.dims[3]}, h, w, d), got shape {list(x4.shape)}")
        kernel = self.composed_kernel()
        batch, _, h, w, d = x4.shape
        side = kernel.shape[-1]
        blocks = torch.einsum("bchwd,coxyz->bohxwydz", x4, kernel.to(x4.dtype))
        out = blocks.reshape(batch, kernel.shape[1], h * side, w * side, d * side)
        bias = self.out_1.conv.conv.bias
        if bias is not None:
            out = out + bias.to(out.dtype).view(1, -1, 1, 1, 1)
        return out

    def composed_kernel(self) -> torch.Tensor:
        """The decoder as one transposed convolution: kernel ``(dims[3], out_channels, 16, 16, 16)`` (stride 16).

        Output voxel ``16 i + 8 a5 + 4 a4 + 2 a3 + a2`` (per axis) of input voxel ``i`` collects the path through
        the offsets ``a5 .. a2`` of the stages' ``2^3`` kernels, so an earlier stage's offset is the more
        significant digit; the kernel is built from the output convolution backwards, one stage at a time.
        """
        out_weight = self.out_1.conv.conv.weight  # (out_channels, dims[0], 1, 1, 1)
        kernel = out_weight.transpose(0, 1)  # (dims[0], out_channels, 1, 1, 1)
        for stage in (self.decoder2, self.decoder3, self.decoder4, self.decoder5):
            weight = stage.transp_conv.conv.weight  # (in, out, 2, 2, 2) of ConvTranspose3d
            side = kernel.shape[-1]
            kernel = torch.einsum("icxyz,coXYZ->ioxXyYzZ", weight, kernel).reshape(
                weight.shape[0], kernel.shape[1], 2 * side, 2 * side, 2 * side
            )
        return kernel


class BrainMVPPretrainModel(nn.Module):
    """The BrainMVP pre-training model: encoder, reconstruction decoder and learnable modality templates.

    Args:
        encoder: a network returning five feature maps ``[x0, ..., x4]`` in the input's axis order
            (:class:`~brainmvp_components.networks.uniformer.UniFormer3D`).
        decoder: maps ``x4`` to the reconstruction (:class:`PretrainDecoder`).
        templates: a :class:`~brainmvp_components.networks.templates.ModalityTemplates`; not used by :meth:`forward`,
            held so that the pre-training engine crops view fills from it and it trains and saves with the
            model (state-dict key ``templates.weight``).

    :meth:`forward` maps a single-modality (possibly masked and filled) crop ``x (B, 1, H, W, D)`` to
    ``(reconstruction (B, 1, H, W, D), x4 (B, dims[-1], H / 16, W / 16, D / 16))``, or to the reconstruction
    alone with ``return_features=False`` (the image-to-image form that ``monai.bundle verify_net_in_out`` checks,
    with ``extra_forward_args={"return_features": False}``).

    State-dict layout: ``encoder.<UniFormer3D keys>``, ``decoder.decoder{5,4,3,2}.transp_conv.conv.weight``,
    ``decoder.out_1.conv.conv.{weight,bias}``, ``templates.*``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, templates: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.templates = templates

    def forward(
        self, x: torch.Tensor, return_features: bool = True
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:  # noqa: UP007 (TorchScript reads typing.Union)
        features = self.encoder(x)
        x4 = features[-1]
        if not return_features:
            return self.decoder(x4)
        return self.decoder(x4), x4

    def parameter_groups(
        self,
        learning_rate: float,
        template_learning_rate: float | None = None,
        template_weight_decay: float | None = None,
    ) -> list[dict]:
        """Optimizer parameter groups: the encoder and decoder, then the templates with their own settings.

        The templates start at zero and receive gradients only through the masked blocks they fill, a few
        voxels per crop, while every network weight sees every crop. With one learning rate for both, a short
        schedule ends before the templates leave the noise of their first steps; a larger template learning
        rate lets them converge in hundreds of steps instead of hundreds of epochs.

        Args:
            learning_rate: learning rate of the encoder and decoder.
            template_learning_rate: learning rate of the templates; ``None`` uses ``learning_rate`` (the
                authors' single-group recipe).
            template_weight_decay: weight decay of the templates; ``None`` keeps the optimizer's default.

        Returns:
            ``[{"params", "lr", "name": "network"}, {"params", "lr", "name": "templates"[, "weight_decay"]}]``
            for ``torch.optim`` optimizers.
        """
        if learning_rate <= 0 or (template_learning_rate is not None and template_learning_rate <= 0):
            raise ValueError(
                f"learning rates must be positive, got {learning_rate} and template {template_learning_rate}"
            )
        templates = list(self.templates.parameters())
        template_ids = {id(p) for p in templates}
        network = [p for p in self.parameters() if id(p) not in template_ids]
        template_group: dict = {
            "params": templates,
            "lr": learning_rate if template_learning_rate is None else template_learning_rate,
            "name": "templates",
        }
        if template_weight_decay is not None:
            template_group["weight_decay"] = template_weight_decay
        return [{"params": network, "lr": learning_rate, "name": "network"}, template_group]


def brainmvp_pretrain_model(
    preset: str = "small",
    template_shape: Sequence[int] = BRATS_ATLAS_SHAPE,
    template_affine: np.ndarray | torch.Tensor | None = None,
    modalities: Sequence[str] = CANONICAL_MODALITIES,
    template_range_floor: float = 1e-6,
    learn_templates: bool = True,
    **encoder_kwargs,
) -> BrainMVPPretrainModel:
    """Build a :class:`BrainMVPPretrainModel` from a UniFormer preset, for bundle configs.

    Args:
        preset: UniFormer size, ``"small"`` (the authors') or ``"tiny"``.
        template_shape: spatial shape ``(H, W, D)`` of each template (the atlas grid by default).
        template_affine: 4x4 voxel-to-world affine of the template grid (``BRATS_ATLAS_AFFINE`` by default).
        modalities: template modalities (canonical names or aliases).
        template_range_floor: the smallest value range a template crop is stretched from in its min-max
            normalisation (``ModalityTemplates.eps``). A crop of a zero-initialised template has no range at all,
            and its gradient reaches the template divided by this floor: with the default (a numerical guard
            only) the first steps' gradients are a million times larger than later ones, and Adam's
            second-moment estimate then shrinks every later step of those voxels for thousands of iterations,
            freezing the first steps' noise. A floor of the order of the image range (1) keeps early and late
            gradients comparable; crops whose range exceeds the floor are normalised exactly as before.
        learn_templates: ``False`` freezes the templates (``requires_grad=False``), for objectives that never
            fill a view with them (the masked-image-modelling baseline), so distributed training sees no parameter
            without a gradient.
        encoder_kwargs: overrides for :class:`UniFormer3D` (``in_channels`` is fixed to 1).
    """
    from brainmvp_components.networks.templates import ModalityTemplates

    if preset not in UNIFORMER_PRESETS:
        raise ValueError(f"unknown UniFormer preset {preset!r}; choose one of {sorted(UNIFORMER_PRESETS)}")
    encoder = UniFormer3D(**{**UNIFORMER_PRESETS[preset], **encoder_kwargs, "in_channels": 1})
    decoder = PretrainDecoder(encoder.out_channels, out_channels=1)
    affine = BRATS_ATLAS_AFFINE if template_affine is None else template_affine
    templates = ModalityTemplates(
        modalities=tuple(modalities), spatial_shape=tuple(template_shape), affine=affine, eps=template_range_floor
    )
    templates.requires_grad_(bool(learn_templates))
    return BrainMVPPretrainModel(encoder, decoder, templates)
