"""Training downstream networks with the encoder frozen: its weights and statistics stay as they were."""

from __future__ import annotations

import pytest
import torch

from brainmvp_components.networks import (
    UniUNet,
    trainable_parameters,
    uniformer_tiny,
    with_frozen_encoder,
)
from brainmvp_components.networks.classifier import BrainMVPClassifier
from brainmvp_components.networks.resunet import brainmvp_resunet


def _step(network: torch.nn.Module, x: torch.Tensor) -> None:
    optimizer = torch.optim.Adam(trainable_parameters(network), lr=1e-2)
    network.train()
    out = network(x)
    loss = sum(o.mean() for o in out) if isinstance(out, list) else out.mean()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("kind", ["segmentation", "classification"])
def test_a_step_with_a_frozen_encoder_moves_only_the_rest(kind):
    torch.manual_seed(0)
    encoder = uniformer_tiny(in_channels=2)
    if kind == "segmentation":
        network = with_frozen_encoder(UniUNet(encoder, out_channels=3), True)
    else:
        network = BrainMVPClassifier(encoder).freeze_encoder()
    encoder_before = {k: v.clone() for k, v in network.encoder.state_dict().items()}
    rest_before = {k: v.clone() for k, v in network.state_dict().items() if not k.startswith("encoder.")}
    _step(network, torch.rand(1, 2, 32, 32, 32))
    assert network.training and not network.encoder.training  # the encoder stays in eval mode
    assert all(torch.equal(v, encoder_before[k]) for k, v in network.encoder.state_dict().items())
    changed = [k for k, v in network.state_dict().items() if k in rest_before and not torch.equal(v, rest_before[k])]
    assert changed  # the decoder or head did train
    assert not any(p.requires_grad for p in network.encoder.parameters())
    trainable = {id(p) for p in trainable_parameters(network)}
    assert trainable and not trainable & {id(p) for p in network.encoder.parameters()}
    network.freeze_encoder(False)
    assert network.encoder.training and all(p.requires_grad for p in network.encoder.parameters())


def test_freezing_needs_a_network_that_can():
    network = brainmvp_resunet(in_channels=1)
    assert with_frozen_encoder(network, False) is network
    with pytest.raises(TypeError, match="no encoder to freeze"):
        with_frozen_encoder(network, True)
