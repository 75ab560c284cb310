"""3-D UniFormer encoder, the backbone BrainMVP pre-trains and fine-tunes.

UniFormer ("UniFormer: Unifying Convolution and Self-attention for Visual Recognition", Li et al., 2022)
stacks four stages: the first two mix tokens with depthwise convolutions (local relation aggregation),
the last two with global multi-head self-attention. BrainMVP uses its 3-D "small" configuration.

The layout (module and parameter names) reproduces the authors' checkpoints, so their state dict loads
after removing the ``encoder.uniformer.`` (pre-training) or ``encoder.`` (fine-tuning) prefix; see
:mod:`brainmvp_components.weights.official`. One detail matters for those weights: the authors' encoder works on
``(B, C, D, H, W)`` (the input ``(B, C, H, W, D)`` is permuted first) and the learned kernels are not
symmetric, so :class:`UniFormer3D` permutes the same way internally and permutes every returned feature
map back to the input's axis order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from monai.networks.layers import DropPath
from torch import nn

from brainmvp_components.networks.depthwise import DepthwiseConv3d
from brainmvp_components.networks.modality_wise import ModalityWiseEncoder

__all__ = [
    "UNIFORMER_PRESETS",
    "PatchEmbed3D",
    "CheckpointedBlock",
    "ConvBlock3D",
    "SelfAttentionBlock3D",
    "UniFormer3D",
    "uniformer_preset",
    "uniformer_small",
    "uniformer_tiny",
]

UNIFORMER_PRESETS: dict[str, dict] = {
    "small": {"dims": (64, 128, 320, 512), "depths": (3, 4, 8, 3), "head_dim": 64},
    "tiny": {"dims": (16, 32, 64, 128), "depths": (1, 1, 2, 1), "head_dim": 16},
}
"""Named sizes. ``small`` is the authors' UniFormer-S (about 22.0 M parameters with one input channel);
``tiny`` is a CPU-friendly size for tests and demonstrations (about 0.41 M parameters)."""


class PatchEmbed3D(nn.Module):
    """Convolutional patch embedding followed by a channel LayerNorm.

    ``proj`` is a ``Conv3d`` (with bias); ``norm`` is a ``LayerNorm`` over channels applied channels-last.
    With the defaults (kernel 2, stride 2) it halves every spatial side.

    Args:
        in_channels: input channels.
        out_channels: embedding channels.
        kernel_size: convolution kernel size.
        stride: convolution stride.
        padding: convolution padding.
        eps: LayerNorm epsilon.

    Shapes: ``(B, in_channels, S1, S2, S3) -> (B, out_channels, S1', S2', S3')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 2,
        stride: int = 2,
        padding: int = 0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class CheckpointedBlock(nn.Module):
    """Base of the UniFormer blocks: :meth:`block_forward` optionally wrapped in activation checkpointing.

    With ``use_checkpoint`` set, in training mode and with gradients enabled, the block's activations are
    recomputed in backward (``torch.utils.checkpoint``, non-reentrant) instead of being stored.
    """

    def __init__(self) -> None:
        super().__init__()
        self.use_checkpoint = False

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.jit.unused
    def _checkpointed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(self.block_forward, x, use_reentrant=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return self._checkpointed_forward(x)
        return self.block_forward(x)


class ConvMlp3D(nn.Module):
    """Pointwise-convolution MLP ``fc1`` (dim -> hidden) -> exact GELU -> ``fc2`` (hidden -> dim) on ``(B, C, ...)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(dim, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(hidden, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TokenMlp(nn.Module):
    """Linear MLP ``fc1`` (dim -> hidden) -> exact GELU -> ``fc2`` (hidden -> dim) on tokens ``(B, N, C)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvBlock3D(CheckpointedBlock):
    """UniFormer local block (stages 1-2): depthwise-convolution token mixing with BatchNorm.

    ``x + pos_embed(x)``; ``x + conv2(attn(conv1(norm1(x))))`` with a 5x5x5 depthwise ``attn``;
    ``x + mlp(norm2(x))``. Shapes: ``(B, dim, S1, S2, S3) -> (B, dim, S1, S2, S3)``.

    Args:
        dim: channels.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pos_embed = DepthwiseConv3d(dim, kernel_size=3)
        self.norm1 = nn.BatchNorm3d(dim)
        self.conv1 = nn.Conv3d(dim, dim, kernel_size=1)
        self.conv2 = nn.Conv3d(dim, dim, kernel_size=1)
        self.attn = DepthwiseConv3d(dim, kernel_size=5)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = ConvMlp3D(dim, int(dim * mlp_ratio))

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on tokens ``(B, N, dim)`` with a fused ``qkv`` projection and output ``proj``.

    The product ``softmax(q k^T / sqrt(head_dim)) v`` is computed by
    :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a memory-efficient kernel when
    one is available (the ``N x N`` attention matrix of a 96^3 crop at stage 3, 1728^2 per head, is then
    never stored for backward).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SelfAttentionBlock3D(CheckpointedBlock):
    """UniFormer global block (stages 3-4): pre-norm transformer block on the flattened tokens.

    ``x + pos_embed(x)`` (depthwise 3x3x3), then on tokens ``(B, N, dim)``: ``x + attn(norm1(x))``,
    ``x + mlp(norm2(x))`` (LayerNorm eps 1e-6). Shapes: ``(B, dim, S1, S2, S3) -> (B, dim, S1, S2, S3)``.

    Args:
        dim: channels.
        num_heads: attention heads (``dim // head_dim``).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        qkv_bias: whether the ``qkv`` projection has a bias.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.pos_embed = DepthwiseConv3d(dim, kernel_size=3)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TokenMlp(dim, int(dim * mlp_ratio))

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        b, c, s1, s2, s3 = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens)))
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return tokens.transpose(1, 2).reshape(b, c, s1, s2, s3)


class UniFormer3D(nn.Module):
    """3-D UniFormer encoder returning five feature maps, BrainMVP's backbone.

    Four stages, each a patch embedding (``Conv3d`` kernel 2 stride 2 + channel LayerNorm) followed by
    ``depths[i]`` blocks: :class:`ConvBlock3D` in stages 1-2, :class:`SelfAttentionBlock3D` in stages 3-4;
    a final ``BatchNorm3d`` normalises the stage-4 output.

    Args:
        in_channels: input channels (1 in pre-training; the number of modalities downstream).
        dims: channels of the four stages.
        depths: blocks per stage.
        head_dim: channels per attention head in stages 3-4 (heads = ``dims[i] // head_dim``).
        mlp_ratio: MLP hidden width relative to the stage width.
        qkv_bias: whether the attention ``qkv`` projections have a bias.
        drop_path_rate: stochastic depth, increasing linearly from 0 to this value over all blocks.
        use_checkpoint: recompute each block in backward (``torch.utils.checkpoint``) during training,
            trading compute for activation memory. Outputs and gradients are unchanged.

    Input ``(B, in_channels, H, W, D)`` with ``H, W, D`` divisible by 16. :meth:`forward` returns
    ``[x0, x1, x2, x3, x4]`` in the input's axis order: ``x0`` is the input and ``x_i`` has shape
    ``(B, dims[i-1], H / 2^i, W / 2^i, D / 2^i)``. :attr:`out_channels` lists ``dims``.

    Example::

        encoder = uniformer_small(in_channels=4)
        x0, x1, x2, x3, x4 = encoder(torch.rand(2, 4, 96, 96, 96))  # x4: (2, 512, 6, 6, 6)
    """

    num_stages: int = 4

    def __init__(
        self,
        in_channels: int = 1,
        dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 8, 3),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(dims) != self.num_stages or len(depths) != self.num_stages:
            raise ValueError(f"dims and depths need {self.num_stages} entries, got dims={dims}, depths={depths}")
        if in_channels < 1 or min(dims) < 1 or min(depths) < 1:
            raise ValueError(f"in_channels, dims and depths must be positive: {in_channels}, {dims}, {depths}")
        for dim in dims[2:]:
            if dim % head_dim != 0:
                raise ValueError(f"attention stage width {dim} is not divisible by head_dim {head_dim}")
        self.in_channels = int(in_channels)
        self.dims = tuple(int(d) for d in dims)
        self.depths = tuple(int(d) for d in depths)
        self.head_dim = int(head_dim)
        self.out_channels: tuple[int, ...] = self.dims
        self.use_checkpoint = use_checkpoint

        rates = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        stage_rates = [rates[sum(self.depths[:i]) : sum(self.depths[: i + 1])] for i in range(self.num_stages)]
        self.patch_embed1 = PatchEmbed3D(self.in_channels, self.dims[0])
        self.patch_embed2 = PatchEmbed3D(self.dims[0], self.dims[1])
        self.patch_embed3 = PatchEmbed3D(self.dims[1], self.dims[2])
        self.patch_embed4 = PatchEmbed3D(self.dims[2], self.dims[3])
        self.blocks1 = nn.ModuleList(ConvBlock3D(self.dims[0], mlp_ratio, r) for r in stage_rates[0])
        self.blocks2 = nn.ModuleList(ConvBlock3D(self.dims[1], mlp_ratio, r) for r in stage_rates[1])
        self.blocks3 = nn.ModuleList(
            SelfAttentionBlock3D(self.dims[2], self.dims[2] // head_dim, mlp_ratio, qkv_bias, r) for r in stage_rates[2]
        )
        self.blocks4 = nn.ModuleList(
            SelfAttentionBlock3D(self.dims[3], self.dims[3] // head_dim, mlp_ratio, qkv_bias, r) for r in stage_rates[3]
        )
        self.norm = nn.BatchNorm3d(self.dims[3])
        self.apply(self._init_weights)
        self.set_checkpointing(use_checkpoint)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"UniFormer3D expects a 5-D input (B, C, H, W, D), got shape {list(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"UniFormer3D was built for {self.in_channels} input channel(s), got input of shape {list(x.shape)}"
            )
        if any(s % 16 != 0 for s in x.shape[2:]):
            raise ValueError(
                f"UniFormer3D needs spatial sides divisible by 16 (four 2x downsamplings), got {list(x.shape)}"
            )

    def set_checkpointing(self, enabled: bool = True) -> UniFormer3D:
        """Switch per-block activation checkpointing on or off (see ``use_checkpoint``); returns ``self``."""
        self.use_checkpoint = bool(enabled)
        for stage in (self.blocks1, self.blocks2, self.blocks3, self.blocks4):
            for block in stage:
                block.use_checkpoint = self.use_checkpoint
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``x (B, C, H, W, D)`` into ``[x0, x1, x2, x3, x4]``, each in the input's axis order."""
        if not torch.jit.is_tracing():  # the checks are on Python ints; a trace would record them as constants
            self._check_input(x)
        h = x.permute(0, 1, 4, 2, 3)  # the authors' (B, C, D, H, W) working order
        x1 = self.patch_embed1(h)
        for block in self.blocks1:
            x1 = block(x1)
        x2 = self.patch_embed2(x1)
        for block in self.blocks2:
            x2 = block(x2)
        x3 = self.patch_embed3(x2)
        for block in self.blocks3:
            x3 = block(x3)
        x4 = self.patch_embed4(x3)
        for block in self.blocks4:
            x4 = block(x4)
        x4 = self.norm(x4)
        return [x] + [f.permute(0, 1, 3, 4, 2) for f in (x1, x2, x3, x4)]


def uniformer_preset(
    preset: str = "small", modality_wise: bool = False, **kwargs
) -> UniFormer3D | ModalityWiseEncoder:
    """Build a :class:`UniFormer3D` of a named size (``"small"`` or ``"tiny"``); ``kwargs`` override the preset.

    With ``modality_wise=True`` the encoder reads one channel and is applied to each of the ``in_channels``
    modalities with shared weights, its stages fused per stage
    (:class:`~brainmvp_components.networks.modality_wise.ModalityWiseEncoder`), so a single-channel pre-trained
    encoder keeps its stem.
    """
    if preset not in UNIFORMER_PRESETS:
        raise ValueError(f"unknown UniFormer preset {preset!r}; choose one of {sorted(UNIFORMER_PRESETS)}")
    if modality_wise:
        in_channels = int(kwargs.pop("in_channels", 1))
        shared = UniFormer3D(**{**UNIFORMER_PRESETS[preset], **kwargs, "in_channels": 1})
        return ModalityWiseEncoder(shared, in_channels)
    return UniFormer3D(**{**UNIFORMER_PRESETS[preset], **kwargs})


def uniformer_small(**kwargs) -> UniFormer3D | ModalityWiseEncoder:
    """UniFormer-S, the authors' size: dims (64, 128, 320, 512), depths (3, 4, 8, 3), head_dim 64 (see
    :func:`uniformer_preset` for ``modality_wise``)."""
    return uniformer_preset("small", **kwargs)


def uniformer_tiny(**kwargs) -> UniFormer3D | ModalityWiseEncoder:
    """A CPU-sized UniFormer: dims (16, 32, 64, 128), depths (1, 1, 2, 1), head_dim 16 (see :func:`uniformer_preset`
    for ``modality_wise``)."""
    return uniformer_preset("tiny", **kwargs)
