"""BrainMVP networks: the UniFormer encoder, the pre-training model, the segmentation network and the UNet variant."""

from brainmvp_components.networks.accelerated import AutocastInference, accelerated_inference_network
from brainmvp_components.networks.backbones import SwinEncoder
from brainmvp_components.networks.freezing import EncoderFreezing, trainable_parameters, with_frozen_encoder
from brainmvp_components.networks.modality_wise import ModalityWiseEncoder
from brainmvp_components.networks.pretrain import (
    BrainMVPPretrainModel,
    PretrainDecoder,
    UpsampleStage,
    brainmvp_pretrain_model,
)
from brainmvp_components.networks.resunet import (
    ResidualBlock3D,
    ResUNet,
    ResUNetDecoder,
    ResUNetEncoder,
    brainmvp_resunet,
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
    "AutocastInference",
    "accelerated_inference_network",
    "UNIFORMER_PRESETS",
    "UniFormer3D",
    "ModalityWiseEncoder",
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
    "ResidualBlock3D",
    "ResUNetEncoder",
    "ResUNetDecoder",
    "ResUNet",
    "brainmvp_resunet",
    "EncoderFreezing",
    "trainable_parameters",
    "with_frozen_encoder",
]
