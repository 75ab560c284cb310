"""Fine-tuning components: template replacement and imputation, losses, the consistency trainer, encoder loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from brainmvp_components.engines.consistency import ConsistencyTrainer
from brainmvp_components.losses.consistency import FeatureConsistencyLoss
from brainmvp_components.losses.segmentation import DeepSupervisionDiceBCELoss
from brainmvp_components.metrics.learning_report import MISSING_FILLS
from brainmvp_components.networks.templates import ModalityTemplates
from brainmvp_components.networks.uniformer import uniformer_tiny
from brainmvp_components.networks.uniunet import UniUNet
from brainmvp_components.transforms.impute import FILL_MODES, ImputeMissingModalitiesd, MissingModalitiesError
from brainmvp_components.transforms.templates import RandTemplateReplaced, load_frozen_templates

MODALITIES = ["t1", "t1c", "t2", "flair"]
ROI = (16, 16, 16)


@pytest.fixture(scope="module")
def templates() -> ModalityTemplates:
    t = ModalityTemplates(MODALITIES, spatial_shape=(40, 40, 40), affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with torch.no_grad():
        t.weight.copy_(torch.rand(t.weight.shape, generator=torch.Generator().manual_seed(0)))
    return t.freeze()


def _image(value: float = 5.0) -> MetaTensor:
    affine = torch.tensor([[2.0, 0, 0, 10], [0, 2.0, 0, 12], [0, 0, 2.0, 8], [0, 0, 0, 1]], dtype=torch.float64)
    return MetaTensor(torch.full((len(MODALITIES), *ROI), value), affine=affine)


def test_template_replacement_count_values_and_pair_independence(templates):
    transform = RandTemplateReplaced(
        "image", templates, MODALITIES, max_replace=3, pair_key="image_pair", replaced_key="replaced"
    ).set_random_state(0)
    img = _image()
    expected = {m: templates.resample_to_grid(m, img.affine, ROI)[0] for m in MODALITIES}
    counts, differ = set(), 0
    for _ in range(40):
        out = transform({"image": img})
        for key, rkey in (("image", "replaced"), ("image_pair", "image_pair_replaced")):
            replaced = out[rkey].tolist()
            assert 0 <= len(replaced) <= 3 and len(set(replaced)) == len(replaced)
            counts.add(len(replaced))
            for c, m in enumerate(MODALITIES):
                if c in replaced:
                    torch.testing.assert_close(out[key][c].as_tensor(), expected[m])
                else:
                    assert torch.all(out[key][c] == 5.0)
            assert torch.equal(torch.as_tensor(out[key].affine), torch.as_tensor(img.affine))
        differ += out["replaced"].tolist() != out["image_pair_replaced"].tolist()
    assert counts == {0, 1, 2, 3}
    assert differ > 10  # the two copies draw independently
    assert torch.all(img == 5.0)  # input untouched


def test_template_replacement_keeps_one_real_channel(templates):
    transform = RandTemplateReplaced("image", templates, ["t1", "flair"], max_replace=3, replaced_key="r")
    transform.set_random_state(1)
    img = MetaTensor(torch.zeros(2, *ROI), affine=torch.eye(4))
    assert max(len(transform({"image": img})["r"]) for _ in range(20)) == 1


def test_replaced_channels_stay_inside_the_real_channels_foreground(templates):
    """A replaced channel is background (zero) wherever the channels that stay real are, as a scaled image is."""
    img = _image(0.0)
    img[:, 4:, 2:6, :] = 0.8  # the "head" of every real channel
    transform = RandTemplateReplaced("image", templates, MODALITIES, max_replace=3, replaced_key="r")
    transform.set_random_state(3)
    seen = 0
    for _ in range(20):
        out = transform({"image": img})
        for c in out["r"].tolist():
            expected = templates.resample_to_grid(MODALITIES[c], img.affine, ROI)[0] * (img[0] > 0.05)
            torch.testing.assert_close(out["image"][c].as_tensor(), expected)
            assert torch.all(out["image"][c][:4] == 0) and out["image"][c][4:, 2:6].max() > 0
            seen += 1
    assert seen > 5


def test_template_replacement_weights_favour_and_exclude_modalities(templates):
    """``replace_weights``: a weight-0 modality is never replaced, a heavier one more often than the rest."""
    transform = RandTemplateReplaced(
        "image", templates, MODALITIES, max_replace=1, replace_weights={"FLAIR": 4.0, "t1": 0.0}, replaced_key="r"
    ).set_random_state(0)
    counts = dict.fromkeys(MODALITIES, 0)
    for _ in range(300):
        for c in transform({"image": _image()})["r"].tolist():
            counts[MODALITIES[c]] += 1
    assert counts["t1"] == 0
    assert counts["flair"] > 2 * max(counts["t1c"], counts["t2"]) and min(counts["t1c"], counts["t2"]) > 0
    only_flair = RandTemplateReplaced(
        "image", templates, MODALITIES, max_replace=3, replace_weights={"t1": 0, "t1c": 0, "t2": 0}, replaced_key="r"
    ).set_random_state(0)
    assert {tuple(only_flair({"image": _image()})["r"].tolist()) for _ in range(30)} == {(), (3,)}


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"dwi": 1.0}, "not among the input modalities"),
        ({"t1": -1.0}, ">= 0"),
        (dict.fromkeys(MODALITIES, 0), "no modality"),
    ],
)
def test_template_replacement_weights_are_checked(templates, weights, message):
    with pytest.raises(ValueError, match=message):
        RandTemplateReplaced("image", templates, MODALITIES, replace_weights=weights)


def test_template_replacement_without_templates_is_identity(tmp_path):
    assert load_frozen_templates(tmp_path / "absent") is None
    transform = RandTemplateReplaced("image", None, MODALITIES, pair_key="image_pair")
    out = transform({"image": _image()})
    assert torch.equal(out["image"], out["image_pair"]) and torch.all(out["image"] == 5.0)


def test_templates_load_from_exported_dir(templates, tmp_path):
    templates.export_nifti(tmp_path / "templates", montage=False)
    loaded = load_frozen_templates(tmp_path, required=MODALITIES)  # finds the templates/ sub-folder
    assert loaded is not None and not loaded.weight.requires_grad
    with pytest.raises(ValueError, match="pd"):
        load_frozen_templates(tmp_path / "templates", required=["pd"])


def test_impute_missing_modalities(templates):
    img = _image()
    img[1] = 0
    img[3] = 0
    # placed by world coordinates (registration off): the templates at the crop's physical location
    out = ImputeMissingModalitiesd("image", templates, MODALITIES, registration="never")(
        {"image": img, "missing_modalities": ["t1c", "flair"], "case": "case-7"}
    )
    torch.testing.assert_close(out["image"][1].as_tensor(), templates.resample_to_grid("t1c", img.affine, ROI)[0])
    torch.testing.assert_close(out["image"][3].as_tensor(), templates.resample_to_grid("flair", img.affine, ROI)[0])
    assert torch.all(out["image"][0] == 5.0)
    assert out["imputed_modalities"] == ["t1c", "flair"]
    assert out["image"].meta["imputed_modalities"] == "t1c,flair"
    with pytest.raises(MissingModalitiesError, match="case-7"):
        ImputeMissingModalitiesd("image", templates, MODALITIES)(
            {"image": img, "missing_modalities": MODALITIES, "case": "case-7"}
        )


def test_baseline_fills_need_no_templates():
    img = MetaTensor(torch.zeros(4, *ROI))
    img[:, 2:6, 2:6, 2:6] = torch.tensor([0.2, 0.0, 0.6, 0.8]).view(4, 1, 1, 1)  # t1c missing
    head = torch.zeros(ROI, dtype=torch.bool)
    head[2:6, 2:6, 2:6] = True
    for fill, inside in (("zeros", 0.0), ("mean", (0.2 + 0.6 + 0.8) / 3)):
        out = ImputeMissingModalitiesd("image", None, MODALITIES, fill=fill)(
            {"image": img, "missing_modalities": ["t1c"], "case": "case-3"}
        )
        filled = out["image"][1].as_tensor()
        torch.testing.assert_close(filled[head], torch.full((int(head.sum()),), inside))
        assert torch.all(filled[~head] == 0) and torch.equal(out["image"][[0, 2, 3]], img[[0, 2, 3]])
        assert out["imputed_modalities"] == ["t1c"]
    with pytest.raises(ValueError, match="fill"):
        ImputeMissingModalitiesd("image", None, MODALITIES, fill="noise")
    assert FILL_MODES == MISSING_FILLS  # the demo reports every fill the transform offers


def test_segmentation_loss_sums_scales():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8)
    target = (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    loss = DeepSupervisionDiceBCELoss()
    single = loss(logits, target)
    assert torch.isclose(loss([logits, logits, logits], target), 3 * single)
    from monai.losses import DiceLoss

    dice = DiceLoss(sigmoid=True)(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.isclose(single, 0.7 * dice + 0.3 * bce)
    with pytest.raises(ValueError, match="shape"):
        loss(logits, target[:, :1])


def test_consistency_loss_values_and_shapes():
    a, b = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    assert FeatureConsistencyLoss()(a, b).item() == pytest.approx(1.0)
    assert FeatureConsistencyLoss(reduction="sum")(a, 2 * b).item() == pytest.approx(96.0)
    assert FeatureConsistencyLoss()([b, a], [a, a]).item() == 0.0  # the last (deepest) element counts
    with pytest.raises(ValueError, match=r"\(2, 4, 3\)"):
        FeatureConsistencyLoss()(a, torch.zeros(2, 4))


def _tiny_unet() -> UniUNet:
    torch.manual_seed(0)
    return UniUNet(uniformer_tiny(in_channels=4), in_channels=4, out_channels=3)


def _trainer(network, feature_layer="encoder", weight=0.1):
    return ConsistencyTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[],
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        loss_function=DeepSupervisionDiceBCELoss(),
        consistency_weight=weight,
        feature_layer=feature_layer,
        decollate=False,
    )


@pytest.mark.parametrize("layer", ["encoder", "ms_out.0"])
def test_consistency_trainer_iteration(layer):
    network = _tiny_unet()
    trainer = _trainer(network, layer)
    torch.manual_seed(1)
    image = torch.rand(1, 4, 32, 32, 32)
    pair = image.clone()
    pair[:, 1] = torch.rand(1, 32, 32, 32)
    label = (torch.rand(1, 3, 32, 32, 32) > 0.5).float()
    captured = []
    module = network.get_submodule(layer)
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o[-1] if isinstance(o, (list, tuple)) else o))
    trainer.state.iteration, trainer.state.epoch_length = 1, 1
    out = trainer._iteration(trainer, {"image": image, "image_pair": pair, "label": label})
    handle.remove()
    features = captured[-1].detach()
    assert features.shape[0] == 2  # both copies in one forward
    expected = torch.mean((features[:1] - features[1:]) ** 2)
    torch.testing.assert_close(out["consistency_loss"], expected)
    torch.testing.assert_close(out["loss"].detach(), out["task_loss"] + 0.1 * out["consistency_loss"])
    assert isinstance(out["pred"], list) and out["pred"][0].shape == (1, 3, 32, 32, 32)
    assert out["consistency_loss"] > 0
    # identical copies: no consistency term
    out = trainer._iteration(trainer, {"image": image, "image_pair": image.clone(), "label": label})
    assert out["consistency_loss"].item() == pytest.approx(0.0, abs=1e-10)


def test_consistency_trainer_without_pair_is_supervised():
    network = _tiny_unet()
    trainer = _trainer(network)
    image, label = torch.rand(1, 4, 32, 32, 32), (torch.rand(1, 3, 32, 32, 32) > 0.5).float()
    trainer.state.iteration, trainer.state.epoch_length = 1, 1
    out = trainer._iteration(trainer, {"image": image, "label": label})
    network.train()
    with torch.no_grad():
        expected = DeepSupervisionDiceBCELoss()(network(image), label)
    torch.testing.assert_close(out["loss"].detach(), expected)
    assert "consistency_loss" not in out
    with pytest.raises(ValueError, match="decoderx"):
        _trainer(network, "decoderx")


def test_load_pretrained_encoder_formats(tmp_path):
    from brainmvp_components.weights.pretrained import load_pretrained_encoder

    source = uniformer_tiny(in_channels=1)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    # the pre-training bundle's models/encoder.pt: a plain single-channel encoder state dict
    torch.save(source.state_dict(), tmp_path / "encoder.pt")
    # the authors' format: wrapped, DDP-prefixed, encoder under encoder.uniformer.
    official = {f"module.encoder.uniformer.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": official, "current_epoch": 3}, tmp_path / "official.pt")
    for name in ("encoder.pt", "official.pt"):
        network = _tiny_unet()
        stem = network.encoder.patch_embed1.proj.weight.clone()
        summary = load_pretrained_encoder(network, tmp_path / name, stem="reinitialise")
        assert summary["loaded"] and any("patch_embed1.proj" in k for k in summary["reinitialised"])
        torch.testing.assert_close(network.encoder.patch_embed1.proj.weight, stem)  # multi-channel stem kept
        key = next(k for k in source.state_dict() if k.startswith("blocks3") and k.endswith("weight"))
        torch.testing.assert_close(network.encoder.state_dict()[key], source.state_dict()[key])
