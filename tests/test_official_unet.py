"""The authors' UNet variant (``BrainMVP_unet.pt``): structure, numerics, conversion, downstream use, bad files.

The checkpoints here are synthetic: the keys and shapes of ``official_unet_pretrain_state_dict_shapes.json``
filled deterministically (the reference fill of ``test_official_weights``), wrapped as the authors release them.
``unet_x4.npy`` / ``unet_rec_sub2.npy`` are the outputs of the authors' code on those weights (see
``tests/data/README.md``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_official_weights import reference_value, released_checkpoint

from brainmvp_components.data.modalities import OFFICIAL_TEMPLATE_ORDER
from brainmvp_components.networks import ResUNet, ResUNetEncoder, brainmvp_resunet
from brainmvp_components.weights.official import (
    CheckpointFormatError,
    check_official_structure,
    load_official_unet_checkpoint,
    official_checkpoint_variant,
    official_unet_state_dict_shapes,
    prepare_official_checkpoint,
    read_state_dict,
)
from brainmvp_components.weights.pretrained import find_pretrained_encoder, load_pretrained_encoder

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "official_brainmvp"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_official_checkpoint.py"
TEMPLATE_GRID = (12, 12, 10)  # the release holds 8 x 240 x 240 x 155; any grid passes the check


def convert_script():
    spec = importlib.util.spec_from_file_location("convert_official_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_shapes() -> dict[str, tuple[int, ...]]:
    shapes = json.loads((REFERENCE_DIR / "official_unet_pretrain_state_dict_shapes.json").read_text())
    return {k: tuple(v) for k, v in shapes.items()}


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory):
    shapes = fixture_shapes()
    shapes["rep_template"] = (len(OFFICIAL_TEMPLATE_ORDER), *TEMPLATE_GRID)
    state = {key: reference_value(key, shape) for key, shape in shapes.items()}
    path = tmp_path_factory.mktemp("official") / "models" / "official" / "BrainMVP_unet.pt"
    path.parent.mkdir(parents=True)
    torch.save(released_checkpoint(state), path)
    return path, state


def test_fixture_is_the_checked_structure():
    """The structure check expects exactly the fixture's keys and shapes, in the authors' order."""
    shapes = fixture_shapes()
    assert shapes.pop("rep_template") == (8, 240, 240, 155)
    expected = official_unet_state_dict_shapes()
    assert list(expected.items()) == list(shapes.items())
    pretrain_form = ResUNet(1, 1, deep_supervision=False, skip_connections=False)
    assert [k.split(".", 1)[1] for k in pretrain_form.state_dict()] == list(shapes)


def test_unet_numerics_match_the_authors_code(unet_file):
    path, state = unet_file
    assert official_checkpoint_variant(read_state_dict(path)) == "unet"
    network, templates = load_official_unet_checkpoint(path)
    network.eval()
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        c4 = network.encoder(x)[-1]
        rec = network(x)
    assert rec.shape == (1, 1, 32, 32, 32) and c4.shape == (1, 256, 4, 4, 4)
    np.testing.assert_allclose(c4.numpy(), np.load(REFERENCE_DIR / "unet_x4.npy"), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        rec[:, :, ::2, ::2, ::2].numpy(), np.load(REFERENCE_DIR / "unet_rec_sub2.npy"), rtol=1e-4, atol=1e-4
    )
    assert templates is not None and tuple(templates.weight.shape) == (8, *TEMPLATE_GRID)
    row = templates.modalities.index("flair")
    torch.testing.assert_close(templates.weight[row].detach(), state["rep_template"][0])  # flair is first there


def test_convert_on_first_use_and_fine_tune(unet_file):
    """First use converts into ``BrainMVP_unet_converted/``; the encoder loads strictly into ``ResUNetEncoder``
    and into the segmentation network (four-channel stem re-initialised), whose output has the documented shape."""
    path, state = unet_file
    converted = prepare_official_checkpoint(path)
    assert converted == path.with_name("BrainMVP_unet_converted")
    assert len(list((converted / "templates").glob("template_*.nii.gz"))) == 8
    assert find_pretrained_encoder(path.with_name("absent.pt"), path) == str(converted / "encoder.pt")

    encoder = ResUNetEncoder(in_channels=1, init_channels=32)
    encoder.load_state_dict(torch.load(converted / "encoder.pt", weights_only=True), strict=True)
    torch.testing.assert_close(encoder.conv4d.conv2.weight.detach(), state["conv4d.conv2.weight"])
    pretrain_form = ResUNet(1, 1, deep_supervision=False, skip_connections=False)
    pretrain_form.load_state_dict(torch.load(converted / "model.pt", weights_only=True), strict=True)

    network = brainmvp_resunet(in_channels=4, out_channels=3)
    summary = load_pretrained_encoder(network, converted / "model.pt", include_decoder=True, stem="reinitialise")
    assert sorted(summary["reinitialised"]) == [
        "decoder.up1conv.bias",
        "decoder.up1conv.weight",
        "encoder.conv1a.bias",
        "encoder.conv1a.weight",
    ]
    assert sorted(summary["missing"]) == ["ms_out.0.bias", "ms_out.0.weight", "ms_out.1.bias", "ms_out.1.weight"]
    torch.testing.assert_close(network.decoder.up4convb.gn1.weight.detach(), state["up4convb.gn1.weight"])
    # the authors' file itself works too
    summary = load_pretrained_encoder(brainmvp_resunet(in_channels=4, out_channels=3), path)
    assert summary["reinitialised"] == ["encoder.conv1a.weight", "encoder.conv1a.bias"]
    summary = load_pretrained_encoder(brainmvp_resunet(in_channels=4, out_channels=3), path, stem="adapt")
    assert summary["adapted"] == ["encoder.conv1a.weight"] and summary["reinitialised"] == []

    x = torch.rand(2, 4, 16, 16, 16)
    network.train()
    outputs = network(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 16, 16)] * 3
    with torch.no_grad():
        assert network.eval()(x).shape == (2, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="divisible by 8"):
        network(torch.rand(1, 4, 12, 16, 16))


@pytest.mark.parametrize(
    "tamper, key",
    [
        (lambda s: s.__setitem__("conv3b.conv1.weight", torch.zeros(128, 128, 1, 1, 1)), "conv3b.conv1.weight"),
        (lambda s: s.pop("up2convb.gn2.bias"), "up2convb.gn2.bias"),
        (lambda s: s.__setitem__("conv5a.weight", torch.zeros(1)), "conv5a.weight"),
        (lambda s: s.__setitem__("rep_template", torch.zeros(9, 2, 2, 2)), "rep_template"),
    ],
    ids=["shape", "missing", "unexpected", "templates"],
)
def test_tampered_unet_file_is_refused_naming_the_key(unet_file, tmp_path, tamper, key):
    main = convert_script().main
    _, state = unet_file
    broken = dict(state)
    tamper(broken)
    bad = tmp_path / "BrainMVP_unet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in broken.items()}}, bad)
    pattern = rf"{bad}.*UNet.*first mismatching key '{key}'"
    with pytest.raises(CheckpointFormatError, match=pattern):
        check_official_structure(read_state_dict(bad), str(bad))
    with pytest.raises(CheckpointFormatError, match=pattern):
        prepare_official_checkpoint(bad)
    assert not bad.with_name("BrainMVP_unet_converted").exists()
    assert main(["--in", str(bad), "--out", str(tmp_path / "out")]) == 1


def test_truncated_unet_file_is_refused_naming_the_file(unet_file, tmp_path):
    path, _ = unet_file
    bad = tmp_path / "BrainMVP_unet.pt"
    data = path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match=str(bad)):
        prepare_official_checkpoint(bad)


def test_seg_bundle_unet_config(unet_file, tmp_path):
    """``configs/unet.json`` merged after train.json (and quick.json) builds the ResUNet, finds the authors' UNet file
    under ``models/official/`` (converted on first use) and loads its encoder."""
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundles" / "brainmvp_brats_seg" / "configs"
    path, _ = unet_file
    bundle_root = tmp_path / "bundle"
    (bundle_root / "models" / "official").mkdir(parents=True)
    (bundle_root / "models" / "official" / "BrainMVP_unet.pt").symlink_to(path)
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ("train.json", "quick.json", "unet.json")])
    parser["bundle_root"] = str(bundle_root)
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, ResUNet) and network.in_channels == 4 and network.deep_supervision
    encoder_file = parser.get_parsed_content("pretrained_encoder")
    converted = bundle_root / "models" / "official" / "BrainMVP_unet_converted"
    assert encoder_file == str(converted / "encoder.pt")
    assert parser.get_parsed_content("templates_dir") == str(converted / "templates")
    summary = load_pretrained_encoder(network, encoder_file)
    assert len(summary["loaded"]) == len(network.encoder.state_dict()) - 2  # all but the 4-channel stem
    assert parser.get_parsed_content("pretrained_stem") == "reinitialise"  # "adapt" when the encoder is frozen


def test_resunet_exports_to_torchscript():
    network = brainmvp_resunet(in_channels=4, out_channels=3, init_channels=8).eval()
    x = torch.rand(1, 4, 16, 16, 16)
    with torch.no_grad():
        expected = network(x)
        torch.testing.assert_close(torch.jit.script(network)(x), expected)
        torch.testing.assert_close(torch.jit.trace(network, x)(x), expected)
