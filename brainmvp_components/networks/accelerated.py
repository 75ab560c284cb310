"""Faster inference of a trained network on a CPU: bfloat16 autocast and ``torch.compile``.

On a CPU with bfloat16 matrix units (AVX-512-BF16, AMX), UniUNet's dense 3-D convolutions run about twice as fast
under bfloat16 autocast, and ``torch.compile`` with Inductor's ``freezing`` (weights folded in as constants, so
oneDNN prepacks each convolution kernel once) removes most of what remains besides the convolutions:
``docs/benchmarks.md`` ("Whole-volume inference") has the figures. On a GPU the bundles' ``amp`` does the
autocast; compiling helps there too.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AutocastInference", "accelerated_inference_network"]


class AutocastInference(nn.Module):
    """Run ``network`` under ``torch.autocast`` to ``dtype`` and return float32.

    Float32 outputs keep the sliding-window blending and the post-processing in full precision. The wrapped
    network is ``self.network``, so its state dict keys gain a ``network.`` prefix: load weights into the
    network before wrapping it.

    Args:
        network: the network to run.
        dtype: the autocast data type.

    Shapes: as ``network``; a tensor output, or a list or tuple of them, is returned as float32.
    """

    def __init__(self, network: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype

    def forward(self, x: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.network(x, *args, **kwargs)
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() for o in out)
        return out.float()


def accelerated_inference_network(network: nn.Module, bf16: bool = False, compile: bool = False) -> nn.Module:
    """``network`` for inference, optionally under bfloat16 autocast and compiled.

    Args:
        network: a network whose weights are loaded (or are loaded in place before its first forward: with
            ``compile`` the weights are frozen into the compiled code at the first forward).
        bf16: run under bfloat16 autocast (outputs float32).
        compile: ``torch.compile`` with Inductor's ``freezing`` (set process-wide: passed as a ``torch.compile``
            option it was not applied, and a UniFormer-S window took 4.5 s instead of 2.7 s); the first forward
            compiles (tens of seconds for UniFormer-S) and a new input shape compiles again.

    Returns:
        ``network`` itself when both are off, else a wrapper (``eval()`` and ``to()`` reach ``network``).
    """
    module: nn.Module = network
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # process-wide: Inductor reads it when the first forward compiles
        module = torch.compile(network)
    return AutocastInference(module) if bf16 else module  # autocast around the compiled network, as benchmarked
