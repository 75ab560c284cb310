"""Tests for the classification components: classifier, block-fill augmentation, metrics and reports."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine

from brainmvp_components.data.modalities import modality_index
from brainmvp_components.engines.consistency import ConsistencyTrainer
from brainmvp_components.metrics.classification import (
    ClassificationMetric,
    ClassificationReportWriter,
    class_weights,
    classification_metrics,
)
from brainmvp_components.networks.classifier import BrainMVPClassifier
from brainmvp_components.networks.templates import ModalityTemplates
from brainmvp_components.networks.uniformer import uniformer_tiny
from brainmvp_components.transforms.blocks import RandTemplateBlockFill, RandTemplateBlockFilld
from brainmvp_components.transforms.masking import num_kept_blocks
from brainmvp_components.weights.pretrained import load_encoder_if_present, load_pretrained_encoder

ROI = (32, 32, 32)


def _classifier(in_channels: int = 1, seed: int = 0) -> BrainMVPClassifier:
    torch.manual_seed(seed)
    return BrainMVPClassifier(uniformer_tiny(in_channels=in_channels), num_classes=2)


# ---------------------------------------------------------------------------------------------- classifier


def test_classifier_shapes_and_pooling():
    net = _classifier().eval()
    x = torch.rand(3, 1, *ROI)
    logits = net(x)
    assert logits.shape == (3, 2)
    deepest = net.encoder(x)[-1]
    assert torch.allclose(logits, net.head(deepest.mean(dim=(2, 3, 4))), atol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        BrainMVPClassifier(uniformer_tiny(), num_classes=1)


def test_layerwise_lr_groups_order_and_coverage():
    net = _classifier()
    base, decay = 1e-3, 0.5
    groups = net.layerwise_lr_groups(base, decay)
    assert [g["name"] for g in groups] == [f"encoder.stage{i}" for i in (1, 2, 3, 4)] + ["head"]
    assert [g["lr"] for g in groups] == pytest.approx([base * decay**k for k in (4, 3, 2, 1, 0)])
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[-1] == base  # deeper -> higher, head at base lr
    # every trainable parameter exactly once; stem in stage 1, final norm in stage 4
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    assert any(p is net.encoder.patch_embed1.proj.weight for p in groups[0]["params"])
    assert any(p is net.encoder.norm.weight for p in groups[3]["params"])
    assert net.encoder_stage("blocks3.0.attn.qkv.weight") == 3
    # usable by torch optimizers; decay 1 gives one learning rate
    torch.optim.AdamW(groups, lr=base)
    assert {g["lr"] for g in net.layerwise_lr_groups(base, 1.0)} == {base}
    with pytest.raises(ValueError, match="decay"):
        net.layerwise_lr_groups(base, 0.0)
    # a frozen encoder leaves only the head
    net.freeze_encoder()
    assert [g["name"] for g in net.layerwise_lr_groups(base, decay)] == ["head"]


def _pair_batches(num_batches: int = 2, batch_size: int = 2):
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(batch_size, 1, *ROI, generator=generator),
            "image_pair": torch.rand(batch_size, 1, *ROI, generator=generator),
            "label": torch.tensor([0, 1][:batch_size]),
        }
        for _ in range(num_batches)
    ]


def test_linear_probe_keeps_encoder_weights_and_batchnorm_statistics():
    net = _classifier().freeze_encoder()
    before_encoder = copy.deepcopy(net.encoder.state_dict())
    before_head = copy.deepcopy(net.head.state_dict())
    net.train()
    assert net.training and not net.encoder.training  # BatchNorm keeps its running statistics
    optimizer = torch.optim.AdamW(net.layerwise_lr_groups(1e-2, 0.75), lr=1e-2, weight_decay=0.05)
    trainer = ConsistencyTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=_pair_batches(),
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        consistency_weight=0.1,
        feature_layer="encoder",
    )
    trainer.run()
    after = net.encoder.state_dict()
    assert set(after) == set(before_encoder)
    for key, value in before_encoder.items():  # weights and BN running_mean/var/num_batches_tracked alike
        assert torch.equal(after[key], value), key
    assert any(not torch.equal(net.head.state_dict()[k], v) for k, v in before_head.items())
    # unfreezing restores normal training
    net.freeze_encoder(False)
    net.train()
    assert net.encoder.training and all(p.requires_grad for p in net.parameters())


def test_frozen_batch_norm_decouples_the_cases_of_a_batch():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32, 32)
    # in training mode the final BatchNorm normalises over the batch, so with global pooling the two cases'
    # pooled features mirror each other about the norm's bias
    net = _classifier().train()
    pooled = net.encoder(x)[-1].flatten(2).mean(dim=2)
    torch.testing.assert_close(pooled.sum(dim=0), 2 * net.encoder.norm.bias, atol=1e-5, rtol=0)
    frozen = copy.deepcopy(net)
    frozen.freeze_batch_norm = True
    frozen.train()
    assert frozen.training and frozen.encoder.training and not frozen.encoder.norm.training
    statistics = frozen.encoder.norm.running_mean.clone()
    with torch.no_grad():
        alone = [frozen(x[i : i + 1]) for i in range(2)]
        together = frozen(x)
    torch.testing.assert_close(together, torch.cat(alone))  # each case's logits no longer depend on its batch
    assert torch.equal(frozen.encoder.norm.running_mean, statistics)
    assert any(p.requires_grad for p in frozen.encoder.norm.parameters())  # its affine still trains


def test_fine_tuning_updates_encoder():
    net = _classifier()
    before = copy.deepcopy(net.encoder.state_dict())
    optimizer = torch.optim.AdamW(net.layerwise_lr_groups(1e-3, 0.75), lr=1e-3)
    trainer = ConsistencyTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_pair_batches(1),
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    trainer.run()
    assert not torch.equal(net.encoder.patch_embed1.proj.weight, before["patch_embed1.proj.weight"])
    assert not torch.equal(net.encoder.norm.running_mean, before["norm.running_mean"])


# ---------------------------------------------------------------------------------------------- weights


def _randomised_encoder(in_channels: int = 1):
    encoder = uniformer_tiny(in_channels=in_channels)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for value in encoder.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=generator))
    return encoder


def _assert_encoder_loaded(net, source, skip_stem: bool = False):
    reference = source.state_dict()
    for key, value in net.encoder.state_dict().items():
        if skip_stem and key.startswith("patch_embed1.proj."):
            assert value.shape != reference[key].shape or not torch.equal(value, reference[key]), key
            continue
        assert torch.equal(value, reference[key]), key


@pytest.mark.parametrize("file_format", ["encoder.pt", "official"])
def test_load_pretrained_encoder_both_formats(tmp_path, file_format):
    source = _randomised_encoder()
    state = source.state_dict()
    path = tmp_path / f"{file_format}.pt"
    if file_format == "encoder.pt":
        torch.save(state, path)
    else:  # the authors' layout: DDP prefix, encoder under encoder.uniformer., templates and decoder beside it
        official = {f"module.encoder.uniformer.{k}": v for k, v in state.items()}
        official["module.rep_template"] = torch.zeros(4, 8, 8, 8)
        official["module.decoder.out_1.weight"] = torch.zeros(1, 16, 1, 1, 1)
        torch.save({"state_dict": official, "current_epoch": 3, "val_best": 0.1}, path)

    single = load_encoder_if_present(_classifier(seed=1), path)
    _assert_encoder_loaded(single, source)  # single channel: the pre-trained stem is kept

    multi = _classifier(in_channels=2, seed=1)
    summary = load_pretrained_encoder(multi, path, stem="reinitialise")
    assert any(k.startswith("encoder.patch_embed1.proj.") for k in summary["reinitialised"])
    _assert_encoder_loaded(multi, source, skip_stem=True)  # multi-channel: the stem is re-initialised
    summary = load_pretrained_encoder(_classifier(in_channels=2, seed=1), path, stem="adapt")
    assert summary["adapted"] == ["encoder.patch_embed1.proj.weight"]  # shared across the channels


def test_missing_pretrained_encoder_warns(tmp_path, caplog):
    net = _classifier()
    before = copy.deepcopy(net.state_dict())
    with caplog.at_level("WARNING"):
        assert load_encoder_if_present(net, tmp_path / "absent.pt") is net
    assert "from scratch" in caplog.text
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


# ---------------------------------------------------------------------------------------------- block fill


def _templates(modalities=("t1", "t2")) -> ModalityTemplates:
    """Random templates on a 2 mm grid whose field of view covers the test samples."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -10.0
    templates = ModalityTemplates(list(modalities), spatial_shape=(40, 40, 40), affine=affine)
    with torch.no_grad():
        templates.weight.copy_(torch.rand(templates.weight.shape, generator=torch.Generator().manual_seed(3)))
    return templates


def _sample(channels: int = 1, shape=ROI) -> MetaTensor:
    affine = torch.tensor([[0.0, 2.0, 0.0, 4.0], [-2.0, 0.0, 0.0, 60.0], [0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    image = 5.0 + torch.rand(channels, *shape, generator=torch.Generator().manual_seed(1))  # outside [0, 1]
    return MetaTensor(image, affine=affine)


def _replaced_blocks(changed: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Per-block replaced flags ``(C, nb)``, asserting every block is replaced entirely or not at all."""
    c, h, w, d = changed.shape
    blocks = changed.reshape(c, h // block, block, w // block, block, d // block, block).permute(0, 1, 3, 5, 2, 4, 6)
    blocks = blocks.reshape(c, -1, block**3)
    assert bool(((blocks.all(-1)) | (~blocks.any(-1))).all()), "a block was partly replaced"
    return blocks.all(-1)


@pytest.mark.parametrize("ratio", [0.25, 0.8])
def test_block_fill_exact_fraction_template_values_and_pair(ratio):
    templates = _templates()
    image = _sample()
    index = torch.tensor([modality_index("t1")])
    transform = RandTemplateBlockFilld("image", templates, mask_ratio=ratio, pair_key="image_pair")
    transform.set_random_state(0)
    out = transform({"image": image, "modality_index": index, "case": "c0"})
    expected_fill = templates.resample_to_grid("t1", image.affine, ROI)
    num_blocks = (32 // 8) ** 3
    copies = []
    for key in ("image", "image_pair"):
        result = out[key]
        assert isinstance(result, MetaTensor) and torch.equal(result.affine, image.affine)
        changed = result != image
        flags = _replaced_blocks(changed)
        assert int(flags.sum()) == num_blocks - num_kept_blocks(num_blocks, ratio)
        assert torch.allclose(result[changed], expected_fill[changed])  # replaced voxels = the template crop
        assert torch.equal(result[~changed], image[~changed])  # the others untouched
        copies.append(changed)
    assert not torch.equal(copies[0], copies[1])  # two independent copies
    assert float(image.min()) >= 5.0  # the input itself is not modified


def test_block_fill_channels_use_their_own_template_and_partial_blocks():
    templates = _templates(("t1", "t2"))
    image = _sample(channels=2, shape=(36, 32, 28))  # sides that are not multiples of 8 end in partial blocks
    transform = RandTemplateBlockFill(templates, mask_ratio=0.5).set_random_state(2)
    out = transform(image, torch.tensor([modality_index("t2"), modality_index("t1")]))
    fill = templates.resample_modalities(["t2", "t1"], image.affine, image.shape[1:])
    for channel in range(2):
        changed = out[channel] != image[channel]
        assert changed.any()
        assert torch.allclose(out[channel][changed], fill[channel][changed])
    flags = transform.block_mask(2, (40, 32, 32))  # the drawn mask on the padded grid, before cropping
    assert torch.equal(flags[:, :36, :, :28], out != image)
    assert int(_replaced_blocks(flags).sum(dim=1)[0]) == 80 - num_kept_blocks(80, 0.5)


def test_block_fill_without_templates_is_identity(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        transform = RandTemplateBlockFilld("image", tmp_path / "absent", pair_key="image_pair")
    assert "off" in caplog.text
    image = _sample()
    out = transform({"image": image, "modality_index": torch.tensor([0])})
    assert out["image"] is image and "image_pair" not in out


def test_block_fill_errors_name_the_problem():
    transform = RandTemplateBlockFilld("image", _templates(("t1",)))
    with pytest.raises(KeyError, match="modality_index"):
        transform({"image": _sample()})
    with pytest.raises(ValueError, match="case 'c7'"):
        transform({"image": _sample(), "modality_index": torch.tensor([modality_index("flair")]), "case": "c7"})
    with pytest.raises(ValueError, match="mask_ratio"):
        RandTemplateBlockFill(_templates(), mask_ratio=(0.6, 0.2))


# ---------------------------------------------------------------------------------------------- metrics


def test_classification_metrics_binary_by_hand():
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8], [0.7, 0.3]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    metrics = classification_metrics(probabilities, labels, ["CN", "AD"])
    # predicted: 0 0 1 1 1 0 -> CN: 2 right 1 wrong; AD: 2 right 1 wrong
    assert metrics["confusion_matrix"] == [[2, 1], [1, 2]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert metrics["f1"] == pytest.approx(2 / 3)  # AD: precision 2/3, recall 2/3
    # AUC of the AD probability: positives {0.55, 0.8, 0.3} vs negatives {0.1, 0.4, 0.7}: 6 of 9 pairs ordered
    assert metrics["auc"] == pytest.approx(6 / 9)
    assert metrics["per_class"]["AD"]["support"] == 3
    # one-hot labels give the same numbers
    one_hot = torch.nn.functional.one_hot(labels, 2)
    assert classification_metrics(probabilities, one_hot)["auc"] == pytest.approx(6 / 9)


def test_classification_metrics_imbalanced_and_multiclass():
    probabilities = torch.tensor([[0.8, 0.2]] * 8 + [[0.3, 0.7], [0.6, 0.4]])
    labels = torch.tensor([0] * 8 + [1, 1])
    metrics = classification_metrics(probabilities, labels)
    assert metrics["accuracy"] == pytest.approx(0.9)
    assert metrics["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    three = torch.eye(3)[torch.tensor([0, 1, 2, 2, 1])] * 0.8 + 0.05
    metrics = classification_metrics(three, torch.tensor([0, 1, 2, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert metrics["f1"] == pytest.approx((1 + 0.8 + 2 / 3) / 3)  # macro F1
    single_class = classification_metrics(torch.tensor([[0.6, 0.4], [0.2, 0.8]]), torch.tensor([0, 0]))
    assert math.isnan(single_class["auc"])
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(torch.rand(2, 2), torch.tensor([0, 2]))


def test_classification_metric_accumulates_lists_and_batches():
    metric = ClassificationMetric("balanced_accuracy")
    metric([torch.tensor([0.8, 0.2]), torch.tensor([0.3, 0.7])], [torch.tensor(0), torch.tensor(0)])
    metric(torch.tensor([[0.1, 0.9]]), torch.tensor([[0.0, 1.0]]))
    assert metric.aggregate().item() == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="unknown"):
        ClassificationMetric("precision")


def test_class_weights():
    data = [{"label": 0}] * 6 + [{"label": 1}] * 2
    assert class_weights(None, data, 2) is None
    assert class_weights("balanced", data, 2).tolist() == pytest.approx([8 / 12, 8 / 4])
    assert class_weights([1, 3], data, 2).tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="every class"):
        class_weights("balanced", [{"label": 0}], 2)


# ---------------------------------------------------------------------------------------------- reports


def _run_writer(tmp_path, with_labels: bool):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    data = [{"image": torch.rand(2, 1, 2, 2, 2), "case": [f"c{2 * i}", f"c{2 * i + 1}"]} for i in range(2)]
    if with_labels:
        for batch in data:
            batch["label"] = torch.tensor([0, 1])
    writer = ClassificationReportWriter(tmp_path, ["CN", "AD"])
    from monai.transforms import Activationsd

    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=net,
        postprocessing=Activationsd(keys="pred", softmax=True),
        val_handlers=[writer],
        additional_metrics=None,
    )
    evaluator.run()
    return writer


def test_report_writer_with_and_without_labels(tmp_path):
    _run_writer(tmp_path / "infer", with_labels=False)
    with open(tmp_path / "infer" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["c0", "c1", "c2", "c3"]
    assert "label" not in rows[0]
    for row in rows:
        assert float(row["prob_CN"]) + float(row["prob_AD"]) == pytest.approx(1.0, abs=1e-6)
        assert row["prediction"] == ("AD" if float(row["prob_AD"]) > float(row["prob_CN"]) else "CN")
    document = json.loads((tmp_path / "infer" / "predictions.json").read_text())
    assert document["class_names"] == ["CN", "AD"] and len(document["cases"]) == 4
    assert not (tmp_path / "infer" / "metrics.json").exists()

    _run_writer(tmp_path / "eval", with_labels=True)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "balanced_accuracy", "f1", "auc", "confusion_matrix"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 4
    with open(tmp_path / "eval" / "metrics.csv", newline="") as f:
        names = [r["metric"] for r in csv.DictReader(f)]
    assert names[:5] == ["num_cases", "accuracy", "balanced_accuracy", "f1", "auc"]
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary file


def test_metric_handlers_through_evaluator():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    data = [{"image": torch.rand(4, 1, 2, 2, 2), "label": torch.tensor([0, 1, 0, 1])}]
    from brainmvp_components.metrics.classification import ClassificationMetricHandler

    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=net,
        key_val_metric={"acc": ClassificationMetricHandler("accuracy", from_engine(["pred", "label"]))},
    )
    evaluator.run()
    probabilities = net(data[0]["image"]).detach()
    expected = classification_metrics(probabilities, data[0]["label"])["accuracy"]
    assert evaluator.state.metrics["acc"] == pytest.approx(expected)
