"""BrainMVP networks: the UniFormer encoder, the pre-training model and the segmentation network."""

from brainmvp_components.networks.backbones import SwinEncoder
from brainmvp_components.networks.pretrain import (
    BrainMVPPretrainModel,
    PretrainDecoder,
    UpsampleStage,
    brainmvp_pretrain_model,
)
from brainmvp_components.networks.uniformer import (
    UNIFORMER_PRESETS,
    UniFormer3D,
    uniformer_preset,
    uniformer_small,
    uniformer_tiny,
)
from brainmvp_components.networks.uniunet import UniUNet, UniUNetDecoder, brainmvp_uniunet

__all__ = [
    "UNIFORMER_PRESETS",
    "UniFormer3D",
    "uniformer_preset",
    "uniformer_small",
    "uniformer_tiny",
    "PretrainDecoder",
    "UpsampleStage",
    "BrainMVPPretrainModel",
    "brainmvp_pretrain_model",
    "UniUNet",
    "UniUNetDecoder",
    "brainmvp_uniunet",
    "SwinEncoder",
]
