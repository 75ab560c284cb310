"""The depthwise convolution with the fast CPU backward matches PyTorch's convolution and its gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainmvp_components.networks.depthwise import DepthwiseConv3d


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_output_and_gradients_match_the_stock_convolution(kernel_size):
    torch.manual_seed(0)
    conv = DepthwiseConv3d(6, kernel_size)
    x = torch.randn(2, 6, 7, 9, 8, requires_grad=True)
    y = conv(x)
    upstream = torch.randn_like(y)
    grad_x, grad_w, grad_b = torch.autograd.grad(y, (x, conv.weight, conv.bias), upstream)

    reference = F.conv3d(x, conv.weight, conv.bias, padding=kernel_size // 2, groups=6)
    ref_x, ref_w, ref_b = torch.autograd.grad(reference, (x, conv.weight, conv.bias), upstream)
    torch.testing.assert_close(y, reference)
    torch.testing.assert_close(grad_x, ref_x)
    torch.testing.assert_close(grad_w, ref_w)
    torch.testing.assert_close(grad_b, ref_b)


def test_bf16_autocast_gradients_follow_the_reference():
    torch.manual_seed(0)
    conv = DepthwiseConv3d(4, 3, bias=False)
    x = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    grad_x, grad_w = torch.autograd.grad(y.float().sum(), (x, conv.weight))
    assert grad_x.dtype == torch.float32 and grad_w.dtype == torch.float32
    reference = F.conv3d(x, conv.weight, padding=1, groups=4)
    ref_x, ref_w = torch.autograd.grad(reference.sum(), (x, conv.weight))
    torch.testing.assert_close(grad_x, ref_x, rtol=0.05, atol=0.05)
    torch.testing.assert_close(grad_w, ref_w, rtol=0.05, atol=0.5)


def test_drop_in_for_conv3d_state_dict_and_torchscript():
    conv = DepthwiseConv3d(5, 3)
    stock = torch.nn.Conv3d(5, 5, 3, padding=1, groups=5)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    stock.load_state_dict(conv.state_dict())
    scripted = torch.jit.script(conv)
    x = torch.randn(1, 5, 6, 6, 6)
    torch.testing.assert_close(scripted(x), stock(x))
    with pytest.raises(ValueError, match="must be odd"):
        DepthwiseConv3d(4, 4)
