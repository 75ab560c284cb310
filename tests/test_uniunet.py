"""UniUNet segmentation network and pre-trained encoder loading."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch

from brainmvp_components.networks.pretrain import brainmvp_pretrain_model
from brainmvp_components.networks.uniformer import uniformer_tiny
from brainmvp_components.networks.uniunet import UniUNet, brainmvp_uniunet
from brainmvp_components.weights.official import CheckpointFormatError
from brainmvp_components.weights.pretrained import load_pretrained_encoder

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "official_brainmvp"
FINETUNE_JSON = REFERENCE_DIR / "official_finetune_uniunet_state_dict_shapes.json"
PRETRAIN_JSON = REFERENCE_DIR / "official_pretrain_state_dict_shapes.json"
STEM = ["encoder.patch_embed1.proj.weight", "encoder.patch_embed1.proj.bias"]


def _fill(key: str, shape: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    return torch.randn(shape, generator=g) / math.sqrt(max(1, math.prod(shape[1:])))


def test_state_dict_matches_official_finetune_layout():
    expected = {k: tuple(v) for k, v in json.loads(FINETUNE_JSON.read_text()).items()}
    net = brainmvp_uniunet("small", in_channels=4, out_channels=3)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == expected
    assert list(ours) == list(expected)  # same order too


def test_logits_match_the_authors_network_on_their_weights():
    """The authors' fine-tuned UniUNet weights, loaded as they are, give their network's logits.

    ``uniunet_logits_sub4.npy`` holds their network's eval-mode logits for these weights and this input (see
    ``tests/data/README.md``); the full-resolution skip ``proj1`` must run in their ``(D, H, W)`` order.
    """
    import numpy as np
    from test_official_weights import reference_value

    shapes = {k: tuple(v) for k, v in json.loads(FINETUNE_JSON.read_text()).items()}
    net = brainmvp_uniunet("small", in_channels=4, out_channels=3)
    net.load_state_dict({k: reference_value(k, shape) for k, shape in shapes.items()})
    x = torch.rand(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        logits = net.eval()(x)[:, :, ::4, ::4, ::4]
    expected = torch.from_numpy(np.load(REFERENCE_DIR / "uniunet_logits_sub4.npy"))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_forward_train_and_eval_shapes():
    net = UniUNet(uniformer_tiny(in_channels=4), in_channels=4, out_channels=3)
    x = torch.rand(2, 4, 32, 16, 16)
    outputs = net.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 3
    assert all(tuple(o.shape) == (2, 3, 32, 16, 16) for o in outputs)
    with torch.no_grad():
        logits = net.eval()(x)
    assert isinstance(logits, torch.Tensor) and tuple(logits.shape) == (2, 3, 32, 16, 16)
    net.deep_supervision = False
    assert isinstance(net.train()(x), torch.Tensor)


def test_deep_supervision_list_feeds_monai_loss():
    from monai.losses import DeepSupervisionLoss, DiceLoss

    net = brainmvp_uniunet("tiny", in_channels=2, out_channels=3).train()
    loss = DeepSupervisionLoss(DiceLoss(sigmoid=True))(net(torch.rand(1, 2, 32, 16, 16)), torch.ones(1, 3, 32, 16, 16))
    loss.backward()
    assert net.ms_out[0].weight.grad is not None and net.ms_out[1].weight.grad is not None


def test_bad_arguments_and_input():
    with pytest.raises(ValueError, match="in_channels=2 but the encoder was built for 4"):
        UniUNet(uniformer_tiny(in_channels=4), in_channels=2)
    with pytest.raises(ValueError, match="out_channels"):
        UniUNet(torch.nn.Conv3d(1, 1, 1), in_channels=1)
    net = brainmvp_uniunet("tiny", in_channels=4)
    with pytest.raises(ValueError, match=r"\[1, 3, 16, 16, 16\]"):
        net(torch.rand(1, 3, 16, 16, 16))


def test_torchscript_trace_and_script():
    net = brainmvp_uniunet("tiny", in_channels=4, out_channels=3).eval()
    x = torch.rand(1, 4, 16, 16, 32)
    with torch.no_grad():
        expected = net(x)
        traced = torch.jit.trace(net, x)
        torch.testing.assert_close(traced(x), expected)
        scripted = torch.jit.script(net)
        torch.testing.assert_close(scripted(x), expected)


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_load_encoder_pt_adapts_or_reinitialises_a_single_channel_stem(tmp_path):
    source = uniformer_tiny()
    path = _save(source.state_dict(), tmp_path / "encoder.pt")
    net = brainmvp_uniunet("tiny", in_channels=4)
    summary = load_pretrained_encoder(net, path, stem="adapt")  # the pre-trained filters shared by the channels
    assert summary["adapted"] == [STEM[0]] and summary["reinitialised"] == [] and summary["missing"] == []
    assert len(summary["loaded"]) == len(source.state_dict())
    torch.testing.assert_close(
        net.encoder.patch_embed1.proj.weight, source.patch_embed1.proj.weight.repeat(1, 4, 1, 1, 1) / 4
    )
    x = torch.rand(1, 1, 32, 32, 32)
    net.eval(), source.eval()
    with torch.no_grad():  # four copies of one image give the single-channel encoder's features
        torch.testing.assert_close(net.encoder(x.repeat(1, 4, 1, 1, 1))[-1], source(x)[-1], atol=1e-5, rtol=1e-4)

    net = brainmvp_uniunet("tiny", in_channels=4)
    stem_before = net.encoder.patch_embed1.proj.weight.detach().clone()
    summary = load_pretrained_encoder(net, path)  # by default, as the authors' fine-tuning
    assert summary["reinitialised"] == STEM and summary["adapted"] == []
    assert len(summary["loaded"]) == len(source.state_dict()) - 2
    torch.testing.assert_close(net.encoder.patch_embed1.proj.weight.detach(), stem_before)
    torch.testing.assert_close(net.encoder.blocks3[1].attn.qkv.weight, source.blocks3[1].attn.qkv.weight)
    with pytest.raises(ValueError, match="strict_stem"):
        load_pretrained_encoder(net, path, strict_stem=True)
    with pytest.raises(ValueError, match="stem must be one of"):
        load_pretrained_encoder(net, path, stem="copy")


def test_load_pretrain_model_pt(tmp_path):
    model = brainmvp_pretrain_model("tiny", template_shape=(8, 8, 8))
    path = _save({"state_dict": model.state_dict()}, tmp_path / "model.pt")
    one_channel = brainmvp_uniunet("tiny", in_channels=1)
    summary = load_pretrained_encoder(one_channel, path)
    assert summary["reinitialised"] == [] and summary["missing"] == []
    torch.testing.assert_close(one_channel.encoder.patch_embed1.proj.weight, model.encoder.patch_embed1.proj.weight)

    net = brainmvp_uniunet("tiny", in_channels=4)
    summary = load_pretrained_encoder(net, path, include_decoder=True)
    assert "decoder.decoder5.transp_conv.conv.weight" in summary["loaded"]
    assert "templates.weight" in summary["unused"] and "decoder.out_1.conv.conv.weight" in summary["unused"]
    torch.testing.assert_close(
        net.decoder.decoder2.transp_conv.conv.weight, model.decoder.decoder2.transp_conv.conv.weight
    )


def test_load_official_checkpoint_into_uniunet(tmp_path):
    shapes = json.loads(PRETRAIN_JSON.read_text())
    state = {f"module.{k}": _fill(k, v) for k, v in shapes.items()}
    path = _save({"state_dict": state, "current_epoch": 1500}, tmp_path / "BrainMVP_uniformer.pt")
    net = brainmvp_uniunet("small", in_channels=4, out_channels=3)
    summary = load_pretrained_encoder(net, path, include_decoder=True, stem="reinitialise")
    assert summary["reinitialised"] == STEM + ["decoder.proj1.proj.weight", "decoder.proj1.proj.bias"]
    expected_missing = {"decoder.out.conv.conv.weight", "decoder.out.conv.conv.bias"}
    expected_missing |= {f"ms_out.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert set(summary["missing"]) == expected_missing
    assert set(summary["unused"]) == {"rep_template", "decoder.out_1.conv.conv.weight", "decoder.out_1.conv.conv.bias"}
    torch.testing.assert_close(
        net.encoder.blocks4[2].mlp.fc2.weight.detach(), state["module.encoder.uniformer.blocks4.2.mlp.fc2.weight"]
    )
    torch.testing.assert_close(
        net.decoder.proj1.norm.weight.detach(), state["module.decoder.proj1.norm.weight"]
    )  # the LayerNorm of proj1 does not depend on the channel count


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    state = uniformer_tiny().state_dict()
    state["blocks3.0.attn.qkv.weight"] = torch.zeros(96, 64)
    path = _save(state, tmp_path / "encoder.pt")
    net = brainmvp_uniunet("tiny", in_channels=4)
    with pytest.raises(ValueError, match=r"encoder.blocks3.0.attn.qkv.weight: file \(96, 64\) vs network \(192, 64\)"):
        load_pretrained_encoder(net, path)


def test_unrelated_file_is_rejected(tmp_path):
    path = _save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointFormatError, match="other.pt"):
        load_pretrained_encoder(brainmvp_uniunet("tiny", in_channels=4), path)


def test_uniunet_on_swin_encoder():
    from brainmvp_components.networks.backbones import SwinEncoder

    encoder = SwinEncoder(in_channels=2, feature_size=12, depths=(1, 1, 1), num_heads=(1, 2, 4))
    x = torch.rand(1, 2, 32, 32, 16)
    features = encoder(x)
    assert [tuple(f.shape[1:]) for f in features[1:]] == [(12, 16, 16, 8), (24, 8, 8, 4), (48, 4, 4, 2), (96, 2, 2, 1)]
    net = UniUNet(encoder, out_channels=3).train()
    assert [tuple(o.shape) for o in net(x)] == [(1, 3, 32, 32, 16)] * 3
