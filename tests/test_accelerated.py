"""Accelerated inference: bfloat16 autocast and torch.compile around a trained network, and the bundle's switches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from brainmvp_components.networks import AutocastInference, UniUNet, accelerated_inference_network, uniformer_tiny

SEG_INFERENCE = Path(__file__).resolve().parents[1] / "bundles" / "brainmvp_brats_seg" / "configs" / "inference.json"


def _tiny_unet() -> UniUNet:
    torch.manual_seed(0)
    return UniUNet(uniformer_tiny(in_channels=4), in_channels=4, out_channels=3).eval()


def test_autocast_inference_returns_float32_close_to_fp32():
    network = _tiny_unet()
    x = torch.rand(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = network(x)
        out = AutocastInference(network)(x)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert not torch.equal(out, reference)  # it did run in bfloat16
    torch.testing.assert_close(out, reference, atol=0.1, rtol=0.05)
    assert ((out >= 0) == (reference >= 0)).float().mean() > 0.98


def test_accelerated_network_is_the_network_when_both_are_off():
    network = _tiny_unet()
    assert accelerated_inference_network(network) is network
    assert isinstance(accelerated_inference_network(network, bf16=True), AutocastInference)


def test_compiled_network_uses_weights_loaded_before_its_first_forward():
    """The bundle loads the checkpoint after building the (lazily) compiled network: the frozen weights must be
    the loaded ones."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 1)).eval()
    compiled = accelerated_inference_network(network, compile=True)
    trained = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 1)).eval()
    network.load_state_dict(trained.state_dict())
    x = torch.rand(1, 2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), trained(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bf16, compile", [(False, False), (True, False), (True, True)])
def test_segmentation_bundle_switches(bf16, compile):
    parser = ConfigParser()
    parser.read_config(str(SEG_INFERENCE))
    parser.update({"bf16": bf16, "compile": compile, "device": "$torch.device('cpu')"})
    network, network_def = parser.get_parsed_content("network"), parser.get_parsed_content("network_def")
    assert (network is network_def) == (not bf16 and not compile)
    loader = parser.get_parsed_content("handlers#0")
    assert loader.load_dict["model"] is network_def  # weights go into the plain network, not a wrapper
