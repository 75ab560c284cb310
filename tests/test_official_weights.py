"""The authors' published checkpoint: loading, numerical equivalence, conversion, format errors.

``tests/data/official_brainmvp`` holds the authors' state-dict key list and reference outputs computed with their
code on deterministically filled weights.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from brainmvp_components.data.modalities import CANONICAL_MODALITIES, OFFICIAL_TEMPLATE_ORDER
from brainmvp_components.networks.pretrain import BrainMVPPretrainModel, brainmvp_pretrain_model
from brainmvp_components.networks.uniformer import uniformer_small, uniformer_tiny
from brainmvp_components.weights.official import (
    CheckpointFormatError,
    convert_official_checkpoint,
    load_official_checkpoint,
    template_grid_affine,
)

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "official_brainmvp"


def reference_value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The reference README's deterministic fill of one state-dict entry."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if key.endswith("running_var"):
        return 1 + 0.1 * torch.rand(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if key == "rep_template":
        return torch.rand(shape, generator=g)
    if len(shape) == 1:
        return (
            0.05 * torch.randn(shape, generator=g)
            if key.endswith("bias")
            else 1 + 0.1 * torch.randn(shape, generator=g)
        )
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))


def released_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """Wrap a state dict as the authors release it (DDP ``module.`` prefixes, optimizer and scheduler)."""
    return {
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]},
        "scheduler": {"last_epoch": 1499, "base_lrs": [3e-4]},
        "current_epoch": 1500,
        "val_best": 0.0,
    }


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    shapes = json.loads((REFERENCE_DIR / "official_pretrain_state_dict_shapes.json").read_text())
    state = {key: reference_value(key, tuple(shape)) for key, shape in shapes.items()}
    path = tmp_path_factory.mktemp("official") / "BrainMVP_uniformer.pt"
    torch.save(released_checkpoint(state), path)
    return path, state


def test_official_numerics(official_file):
    path, state = official_file
    model = load_official_checkpoint(path).eval()
    x = torch.rand(1, 1, 96, 96, 96, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        rec, x4 = model(x)
    x4_ref = np.load(REFERENCE_DIR / "x4.npy")
    rec_ref = np.load(REFERENCE_DIR / "rec_sub4.npy")
    assert x4.shape == x4_ref.shape and rec.shape == (1, 1, 96, 96, 96)
    np.testing.assert_allclose(x4.numpy(), x4_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rec[:, :, ::4, ::4, ::4].numpy(), rec_ref, rtol=1e-4, atol=1e-4)


def test_official_templates_are_reordered_to_canonical(official_file):
    path, state = official_file
    model = load_official_checkpoint(path)
    templates = model.templates
    assert templates.modalities == ("t1", "t1c", "t2", "flair")  # the first four of the authors' order
    assert tuple(templates.weight.shape) == (4, 96, 96, 96)
    for row, modality in enumerate(templates.modalities):
        torch.testing.assert_close(
            templates.weight[row].detach(), state["rep_template"][OFFICIAL_TEMPLATE_ORDER.index(modality)]
        )
    np.testing.assert_allclose(templates.affine.numpy(), template_grid_affine((96, 96, 96)))


def test_convert_round_trip(official_file, tmp_path):
    path, state = official_file
    written = convert_official_checkpoint(path, tmp_path / "converted")
    assert set(written) == {"encoder", "model", "template_t1", "template_t1c", "template_t2", "template_flair"}
    assert all(p.is_file() for p in written.values())
    assert not list((tmp_path / "converted").glob("*.tmp"))

    encoder = uniformer_small()
    encoder.load_state_dict(torch.load(written["encoder"], weights_only=True, map_location="cpu"), strict=True)
    torch.testing.assert_close(
        encoder.blocks3[7].attn.qkv.weight.detach(), state["encoder.uniformer.blocks3.7.attn.qkv.weight"]
    )

    model = brainmvp_pretrain_model(
        "small",
        template_shape=(96, 96, 96),
        template_affine=template_grid_affine((96, 96, 96)),
        modalities=("t1", "t1c", "t2", "flair"),
    )
    model.load_state_dict(torch.load(written["model"], weights_only=True, map_location="cpu"), strict=True)
    torch.testing.assert_close(model.decoder.out_1.conv.conv.bias.detach(), state["decoder.out_1.conv.conv.bias"])

    import nibabel as nib

    flair = nib.load(str(written["template_flair"]))
    np.testing.assert_allclose(flair.get_fdata(dtype=np.float32), state["rep_template"][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(flair.affine, template_grid_affine((96, 96, 96)), atol=1e-5)


def _tiny_official_state(template_shape=(8, 8, 6)) -> dict[str, torch.Tensor]:
    """A tiny model's weights in the authors' layout, with all eight templates (rows in their order)."""
    model = brainmvp_pretrain_model("tiny", template_shape=template_shape)
    state = {f"encoder.uniformer.{k}": v for k, v in model.encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in model.decoder.state_dict().items()})
    state["decoder.proj1.proj.weight"] = torch.zeros(16, 1, 3, 3, 3)  # unused in pre-training
    state["decoder.decoder5.conv_block.conv1.conv.weight"] = torch.zeros(64, 128, 3, 3, 3)
    state["rep_template"] = torch.arange(8.0).view(8, 1, 1, 1).expand(8, *template_shape).clone()
    return state


def test_bare_tiny_official_state_dict(tmp_path):
    state = _tiny_official_state()
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    model = load_official_checkpoint(path, head_dim=16)
    assert isinstance(model, BrainMVPPretrainModel)
    assert model.encoder.out_channels == (16, 32, 64, 128) and model.encoder.depths == (1, 1, 2, 1)
    assert model.templates.modalities == CANONICAL_MODALITIES
    rows = model.templates.weight[:, 0, 0, 0].tolist()
    assert rows == [float(OFFICIAL_TEMPLATE_ORDER.index(m)) for m in CANONICAL_MODALITIES]
    reference = uniformer_tiny()
    reference.load_state_dict({k[len("encoder.uniformer.") :]: v for k, v in state.items() if "uniformer" in k})
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encoder(x)[-1], reference.eval()(x)[-1])


def test_atlas_sized_templates_get_atlas_affine():
    from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE

    np.testing.assert_array_equal(template_grid_affine((240, 240, 155)), BRATS_ATLAS_AFFINE)
    coarse = template_grid_affine((120, 120, 155))
    # the box edges coincide: voxel -0.5 of the coarse grid is voxel -0.5 of the atlas
    edge = coarse @ np.array([-0.5, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(edge, BRATS_ATLAS_AFFINE @ np.array([-0.5, -0.5, -0.5, 1.0]))


def test_non_brainmvp_files_are_rejected(tmp_path):
    other = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 1, 3, 3)}}, other)
    with pytest.raises(CheckpointFormatError, match="not a BrainMVP") as err:
        load_official_checkpoint(other)
    assert str(other) in str(err.value)

    not_weights = tmp_path / "notes.pt"
    not_weights.write_text("hello")
    with pytest.raises(CheckpointFormatError, match="cannot be read") as err:
        load_official_checkpoint(not_weights)
    assert str(not_weights) in str(err.value)

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_official_checkpoint(tmp_path / "missing.pt")


def test_unknown_and_mismatched_keys_are_rejected(tmp_path):
    state = _tiny_official_state()
    state["decoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointFormatError, match="decoder.extra_head.weight"):
        load_official_checkpoint(path, head_dim=16)

    state = _tiny_official_state()
    state["decoder.decoder4.transp_conv.conv.weight"] = torch.zeros(64, 16, 2, 2, 2)
    torch.save(state, path)
    with pytest.raises(CheckpointFormatError, match=r"decoder.decoder4.transp_conv.conv.weight: file \(64, 16"):
        load_official_checkpoint(path, head_dim=16)

    state = _tiny_official_state()
    del state["encoder.uniformer.blocks2.0.mlp.fc2.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointFormatError, match="missing keys.*blocks2.0.mlp.fc2.bias"):
        load_official_checkpoint(path, head_dim=16)


def test_official_structure_matches_the_authors_key_list():
    """The structure check's expected keys and shapes are exactly the authors' (unused decoder keys aside)."""
    from brainmvp_components.weights.official import OFFICIAL_UNUSED_KEYS, official_state_dict_shapes

    reference = json.loads((REFERENCE_DIR / "official_pretrain_state_dict_shapes.json").read_text())
    wanted = {k: tuple(v) for k, v in reference.items() if k != "rep_template" and not OFFICIAL_UNUSED_KEYS.match(k)}
    assert official_state_dict_shapes() == wanted


def test_prepare_official_checkpoint_converts_once_and_checks_structure(official_file, tmp_path):
    """large_files.yml fetches the authors' file without a hash: first use checks keys and shapes, converts,
    and later uses reuse the conversion; a file of the wrong structure is refused, naming the key."""
    from brainmvp_components.weights.official import prepare_official_checkpoint
    from brainmvp_components.weights.pretrained import find_pretrained_encoder, find_templates_dir

    path, state = official_file
    local = tmp_path / "models" / "official" / "BrainMVP_uniformer.pt"
    local.parent.mkdir(parents=True)
    local.symlink_to(path)
    converted = prepare_official_checkpoint(local)
    assert converted == local.with_name("BrainMVP_uniformer_converted")
    stamp = (converted / "encoder.pt").stat().st_mtime_ns
    assert find_pretrained_encoder(tmp_path / "absent.pt", local) == str(converted / "encoder.pt")
    assert find_templates_dir(tmp_path / "no_templates", local) == str(converted / "templates")
    assert (converted / "encoder.pt").stat().st_mtime_ns == stamp  # not converted twice
    assert find_pretrained_encoder(tmp_path / "absent.pt") == str(tmp_path / "absent.pt")

    broken = dict(state)
    broken["encoder.uniformer.blocks3.0.attn.qkv.weight"] = torch.zeros(3, 3)
    del broken["decoder.out_1.conv.conv.bias"]
    bad = tmp_path / "bad" / "BrainMVP_uniformer.pt"
    bad.parent.mkdir()
    torch.save({"state_dict": broken}, bad)
    with pytest.raises(CheckpointFormatError, match=r"decoder\.out_1\.conv\.conv\.bias.*blocks3\.0\.attn\.qkv"):
        prepare_official_checkpoint(bad)
    assert not bad.with_name("BrainMVP_uniformer_converted").exists()
