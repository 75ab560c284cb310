"""UniFormer3D encoder and the pre-training model: shapes, input validation, activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch

from brainmvp_components.networks.pretrain import BrainMVPPretrainModel, PretrainDecoder, brainmvp_pretrain_model
from brainmvp_components.networks.uniformer import UniFormer3D, uniformer_preset, uniformer_small, uniformer_tiny


def _expected_shapes(batch, dims, spatial):
    return [(batch, c, *(s // 2**i for s in spatial)) for i, c in enumerate(dims, start=1)]


@pytest.mark.parametrize("spatial", [(32, 48, 64), (16, 16, 32)])
def test_tiny_feature_shapes_follow_input_axis_order(spatial):
    encoder = uniformer_tiny(in_channels=2).eval()
    x = torch.rand(2, 2, *spatial)
    with torch.no_grad():
        features = encoder(x)
    assert len(features) == 5
    assert features[0] is x
    assert [tuple(f.shape) for f in features[1:]] == _expected_shapes(2, (16, 32, 64, 128), spatial)
    assert encoder.out_channels == (16, 32, 64, 128)


def test_small_preset_shapes_and_sizes():
    encoder = uniformer_small().eval()
    assert encoder.out_channels == (64, 128, 320, 512)
    assert encoder.depths == (3, 4, 8, 3)
    assert [len(encoder.blocks3[0].attn.qkv.weight)] == [3 * 320]
    assert encoder.blocks3[0].attn.num_heads == 5 and encoder.blocks4[0].attn.num_heads == 8
    with torch.no_grad():
        features = encoder(torch.rand(1, 1, 32, 16, 48))
    assert [tuple(f.shape) for f in features[1:]] == _expected_shapes(1, encoder.out_channels, (32, 16, 48))


def test_axis_order_is_not_symmetric():
    # the encoder works internally on (D, H, W); a transposed input must not give transposed features
    encoder = uniformer_tiny().eval()
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        a = encoder(x)[-1]
        b = encoder(x.transpose(2, 4))[-1].transpose(2, 4)
    assert not torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "shape, match",
    [((1, 32, 32, 32), "5-D"), ((1, 2, 32, 32, 32), "input channel"), ((1, 1, 32, 40, 32), "divisible by 16")],
)
def test_bad_input_raises_with_shape(shape, match):
    encoder = uniformer_tiny()
    with pytest.raises(ValueError, match=match) as err:
        encoder(torch.rand(*shape))
    assert str(list(shape)) in str(err.value)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="preset"):
        uniformer_preset("huge")
    with pytest.raises(ValueError, match="head_dim"):
        UniFormer3D(dims=(16, 32, 60, 128), depths=(1, 1, 1, 1), head_dim=16)
    with pytest.raises(ValueError, match="4 entries"):
        UniFormer3D(dims=(16, 32, 64), depths=(1, 1, 1))


def test_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = uniformer_tiny(depths=(2, 1, 2, 1)).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_checkpointing(True)
    assert checkpointed.blocks3[1].use_checkpoint
    x = torch.rand(2, 1, 16, 16, 32)
    outputs = []
    for net in (plain, checkpointed):
        features = net(x)
        sum(f.square().mean() for f in features[1:]).backward()
        outputs.append((features, {n: p.grad.clone() for n, p in net.named_parameters()}))
    for a, b in zip(outputs[0][0], outputs[1][0]):
        torch.testing.assert_close(a, b)
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(grad, outputs[1][1][name], msg=name)


def test_drop_path_trains():
    encoder = uniformer_tiny(drop_path_rate=0.2).train()
    features = encoder(torch.rand(2, 1, 16, 16, 16))
    features[-1].mean().backward()
    assert encoder.patch_embed1.proj.weight.grad is not None


def test_pretrain_model_forward_shapes():
    model = brainmvp_pretrain_model("tiny", template_shape=(12, 12, 10), modalities=("t1", "flair"))
    assert isinstance(model, BrainMVPPretrainModel)
    assert tuple(model.templates.weight.shape) == (2, 12, 12, 10)
    rec, x4 = model(torch.rand(2, 1, 32, 16, 48))
    assert tuple(rec.shape) == (2, 1, 32, 16, 48)
    assert tuple(x4.shape) == (2, 128, 2, 1, 3)
    keys = set(model.state_dict())
    assert {"decoder.decoder5.transp_conv.conv.weight", "decoder.out_1.conv.conv.bias", "templates.weight"} <= keys
    assert not any("conv_block" in k or "proj1" in k for k in keys)


def test_pretrain_decoder_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\[1, 64, 2, 2, 2\]"):
        PretrainDecoder((16, 32, 64, 128))(torch.rand(1, 64, 2, 2, 2))


def test_pretrain_decoder_composed_kernel_equals_the_stages():
    """The one-kernel forward gives the stage-by-stage output and the same gradients for every parameter."""
    torch.manual_seed(0)
    decoder = PretrainDecoder((16, 32, 64, 128), out_channels=2).double()
    x4 = torch.randn(2, 128, 2, 1, 3, dtype=torch.float64, requires_grad=True)
    composed = decoder(x4)
    stagewise = decoder.out_1(decoder.decoder2(decoder.decoder3(decoder.decoder4(decoder.decoder5(x4)))))
    assert tuple(composed.shape) == (2, 2, 32, 16, 48)
    torch.testing.assert_close(composed, stagewise, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(composed)
    params = [x4, *decoder.parameters()]
    grads_composed = torch.autograd.grad(composed, params, upstream)
    grads_stagewise = torch.autograd.grad(stagewise, params, upstream)
    for g_composed, g_stagewise in zip(grads_composed, grads_stagewise):
        torch.testing.assert_close(g_composed, g_stagewise, rtol=1e-10, atol=1e-10)
