"""Training a downstream network with its pre-trained encoder frozen (linear probing, frozen-feature decoders)."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from brainmvp_components.networks.modality_wise import ModalityWiseEncoder

__all__ = ["EncoderFreezing", "trainable_parameters", "with_frozen_encoder"]


class EncoderFreezing:
    """Mixin for an ``nn.Module`` with an ``encoder`` submodule: :meth:`freeze_encoder` stops its training.

    What freezes is the pre-trained part: the encoder, or the shared single-channel encoder of a
    :class:`~brainmvp_components.networks.modality_wise.ModalityWiseEncoder`, whose fusion of the modalities (new,
    not pre-trained) keeps training. A frozen encoder has ``requires_grad=False`` parameters (left out by
    :func:`trainable_parameters`, so the optimizer never holds them) and stays in eval mode whatever the network's
    mode: its normalisation layers use the statistics they have and do not update them, and stochastic depth is
    off. List it before ``nn.Module`` among the bases.
    """

    # no class-level annotations: TorchScript reads them, and cannot resolve ``nn.Module`` as an attribute type
    encoder_frozen = False

    def pretrained_encoder(self) -> nn.Module:
        """The module a pre-training's ``encoder.pt`` fills: the encoder, or a modality-wise one's shared encoder."""
        encoder = self.encoder
        return encoder.encoder if isinstance(encoder, ModalityWiseEncoder) else encoder

    def freeze_encoder(self, freeze: bool = True):
        """Freeze (``freeze=True``) or release the encoder; returns the network, for chaining in configs."""
        self.encoder_frozen = bool(freeze)
        self.pretrained_encoder().requires_grad_(not self.encoder_frozen)
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        if self.encoder_frozen:
            self.pretrained_encoder().eval()
        return self


def trainable_parameters(network: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters of ``network`` that train (``requires_grad``): what the optimizer of a network with a
    frozen encoder is given."""
    return (p for p in network.parameters() if p.requires_grad)


def with_frozen_encoder(network: nn.Module, freeze: bool) -> nn.Module:
    """``network`` with its encoder frozen when ``freeze`` (configs call this on any ``network_def``).

    Raises:
        TypeError: ``freeze`` for a network that cannot freeze an encoder (not an :class:`EncoderFreezing`).
    """
    if not freeze:
        return network
    if not isinstance(network, EncoderFreezing):
        raise TypeError(f"{type(network).__name__} has no encoder to freeze (freeze_encoder needs UniUNet or similar)")
    return network.freeze_encoder(True)
