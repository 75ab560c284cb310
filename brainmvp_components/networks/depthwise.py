"""Depthwise 3-D convolution with a faster CPU backward, for UniFormer's convolutional stages.

On CPU, PyTorch's backward of a depthwise (``groups == channels``) 3-D convolution computes the input
gradient about ten times slower than the forward convolution, although for a stride-1 convolution with
"same" padding that gradient is itself a depthwise convolution of the output gradient with the spatially
flipped kernel. :class:`DepthwiseConv3d` computes it that way (the forward kernel, which oneDNN runs
fast) and leaves the weight gradient to PyTorch. On UniFormer-S stage 1 shapes (4 x 64 x 48^3, kernel 5, one
thread) the input gradient takes 3.3 s with the stock backward and 0.5 s here.

:class:`DepthwiseConv3d` is a drop-in :class:`torch.nn.Conv3d` (same parameters and state dict); on other
devices, in TorchScript (scripted or traced) and without gradients it runs the stock convolution. Figures:
``docs/benchmarks.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthwiseConv3d", "depthwise_conv3d"]


class _DepthwiseConv3dFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv3d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        groups, padding = weight.shape[0], [ctx.padding] * 3
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3, 4).to(grad_output.dtype)
            grad_x = F.conv3d(grad_output, flipped, padding=ctx.padding, groups=groups)
        if ctx.needs_input_grad[1]:
            dtype = grad_output.dtype
            grad_weight = torch.ops.aten.convolution_backward(
                grad_output, x.to(dtype), weight.to(dtype), None, [1, 1, 1], padding, [1, 1, 1], False, [0, 0, 0],
                groups, [False, True, False],
            )[1].to(weight.dtype)  # fmt: skip
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3, 4), dtype=torch.float32).to(weight.dtype)
        return grad_x, grad_weight, grad_bias, None


def depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """Depthwise, stride-1, "same" 3-D convolution with the fast CPU backward.

    Args:
        x: ``(B, C, S1, S2, S3)``.
        weight: ``(C, 1, k, k, k)`` with odd ``k``; ``padding`` must be ``k // 2``.
        bias: ``(C,)`` or ``None``.

    Returns:
        ``(B, C, S1, S2, S3)``.
    """
    return _DepthwiseConv3dFunction.apply(x, weight, bias, padding)


class DepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)``.

    Shapes: ``(B, channels, S1, S2, S3) -> (B, channels, S1, S2, S3)``.

    Args:
        channels: input and output channels (one filter per channel).
        kernel_size: odd cube side of the kernel.
        bias: learn an additive bias.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or x.device.type != "cpu" or not torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)
        return self._fast_backward_forward(x)

    @torch.jit.unused
    def _fast_backward_forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv3d(x, self.weight, self.bias, self.kernel_size[0] // 2)
