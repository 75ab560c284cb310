"""ModalityWiseEncoder: a single-channel encoder shared by the modalities, fused per stage, loaded and frozen as the
pre-trained part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from brainmvp_components.networks import ModalityWiseEncoder, UniFormer3D, UniUNet, uniformer_tiny
from brainmvp_components.networks.classifier import BrainMVPClassifier
from brainmvp_components.weights.pretrained import load_pretrained_encoder

CONFIGS = Path(__file__).resolve().parents[1] / "bundles"


def test_fusion_starts_as_the_mean_of_the_modalities():
    torch.manual_seed(0)
    encoder = uniformer_tiny(in_channels=3, modality_wise=True).eval()
    assert isinstance(encoder, ModalityWiseEncoder) and isinstance(encoder.encoder, UniFormer3D)
    assert encoder.in_channels == 3 and encoder.out_channels == (16, 32, 64, 128) and encoder.encoder.in_channels == 1
    x = torch.rand(2, 3, 32, 32, 32)
    with torch.no_grad():
        fused = encoder(x)
        alone = [encoder.encoder(x[:, c : c + 1]) for c in range(3)]
    assert torch.equal(fused[0], x) and len(fused) == 5
    for stage in range(1, 5):
        mean = torch.stack([a[stage] for a in alone]).mean(dim=0)
        torch.testing.assert_close(fused[stage], mean, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W, D\)"):
        encoder(torch.rand(1, 4, 32, 32, 32))
    with pytest.raises(ValueError, match="must read one channel"):
        ModalityWiseEncoder(uniformer_tiny(in_channels=2), 4)


def test_pretrained_single_channel_encoder_loads_as_is_and_freezes_alone(tmp_path):
    pretrained = uniformer_tiny(in_channels=1)
    torch.save(pretrained.state_dict(), tmp_path / "encoder.pt")
    network = UniUNet(uniformer_tiny(in_channels=4, modality_wise=True), out_channels=3)
    summary = load_pretrained_encoder(network, tmp_path / "encoder.pt")
    assert summary["reinitialised"] == [] and summary["adapted"] == [] and summary["missing"] == []
    assert len(summary["loaded"]) == len(pretrained.state_dict())  # the stem included: it reads one channel
    for key, value in pretrained.state_dict().items():
        assert torch.equal(network.state_dict()[f"encoder.encoder.{key}"], value)

    network.freeze_encoder()
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    assert not any(name.startswith("encoder.encoder.") for name in trainable)
    assert any(name.startswith("encoder.fuse.") for name in trainable)  # the fusion is new: it trains
    network.train()
    assert not network.encoder.encoder.training and network.encoder.fuse.training

    classifier = BrainMVPClassifier(uniformer_tiny(in_channels=4, modality_wise=True), num_classes=2)
    assert classifier(torch.rand(2, 4, 32, 32, 32)).shape == (2, 2)
    assert load_pretrained_encoder(classifier, tmp_path / "encoder.pt")["missing"] == []


@pytest.mark.parametrize("bundle", ["brainmvp_brats_seg", "brainmvp_adni_cls"])
def test_bundles_build_it_on_request(bundle):
    parser = ConfigParser()
    configs = CONFIGS / bundle / "configs"
    parser.read_config([str(configs / "train.json"), str(configs / "quick.json")])
    assert not isinstance(parser.get_parsed_content("network_def").encoder, ModalityWiseEncoder)  # the default
    parser["modality_wise_encoder"] = True
    encoder = parser.get_parsed_content("network_def", instantiate=True).encoder
    modalities = len(parser.get_parsed_content("input_modalities"))  # four for segmentation, t1 for classification
    assert isinstance(encoder, ModalityWiseEncoder) and encoder.in_channels == modalities
    assert encoder.encoder.dims[0] == 16  # quick.json's tiny preset
