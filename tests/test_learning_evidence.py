"""The measurements that show learning: template fidelity, held-out reconstruction ratio, the demo summary, and
the figures (training curves, template evolution, segmentation comparison)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from torch import nn

from brainmvp_components.data.atlas import atlas_grid
from brainmvp_components.data.datalist import build_datalist, load_datalist
from brainmvp_components.data.modalities import modality_index
from brainmvp_components.handlers.curves import TrainingCurvesHandler
from brainmvp_components.handlers.previews import TemplateEvolutionHandler
from brainmvp_components.metrics.learning_report import (
    SUMMARY_KEYS,
    TARGETS,
    build_learning_summary,
    seeds_table,
    summary_table,
)
from brainmvp_components.metrics.pretraining import (
    cohort_mean_images,
    pearson_r,
    reconstruction_mse_ratio,
    template_correlations,
)
from brainmvp_components.networks.pretrain import brainmvp_pretrain_model
from brainmvp_components.networks.templates import ModalityTemplates
from brainmvp_components.visualize.previews import save_segmentation_comparison, tumour_slice


# ---------------------------------------------------------------------------------------------------- metrics
def test_pearson_r_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 7, 8))
    assert pearson_r(a, 3 * a + 2) == pytest.approx(1.0)
    assert pearson_r(a, -a) == pytest.approx(-1.0)
    b = rng.normal(size=a.shape)
    assert abs(pearson_r(a, b)) < 0.15
    mask = np.zeros(a.shape, bool)
    mask[:3] = True
    c = np.where(mask, a, rng.normal(size=a.shape))  # equal inside the mask only
    assert pearson_r(a, c, mask) == pytest.approx(1.0)
    assert math.isnan(pearson_r(np.ones(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="shape"):
        pearson_r(np.ones(3), np.ones(4))


@pytest.fixture(scope="module")
def pretrain_datalist(pretrain_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_datalist") / "datalist.json"
    build_datalist(pretrain_cohort, out, val_fraction=0.34, seed=0)
    return out


def test_template_equal_to_cohort_mean_scores_one_and_noise_scores_zero(pretrain_datalist):
    cases = load_datalist(pretrain_datalist, "training")
    shape, affine = atlas_grid(4.0)
    means, counts = cohort_mean_images(cases, affine, shape, ["t1", "t2"])
    assert set(means) <= {"t1", "t2"} and means and all(counts[m] >= 1 for m in means)
    for array in means.values():
        assert array.shape == shape and 0.0 <= array.min() and array.max() <= 1.0 and array.max() > 0.5

    templates = ModalityTemplates(list(means), spatial_shape=shape, affine=affine)
    with torch.no_grad():
        for row, name in enumerate(templates.modalities):
            templates.weight[row] = torch.from_numpy(5.0 * means[name] - 1.0)  # any positive linear map
    scores = template_correlations(templates, cases)
    assert set(scores) == set(means)
    assert all(r == pytest.approx(1.0, abs=1e-5) for r in scores.values())

    with torch.no_grad():
        templates.weight.normal_(generator=torch.Generator().manual_seed(0))
    noise = template_correlations(templates, cases)
    assert all(abs(r) < 0.1 for r in noise.values())


class _StubPretrainModel(nn.Module):
    """Returns either its input (a perfect reconstruction when the fill equals the target) or the input's mean."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.templates = ModalityTemplates(["t1", "t2"], spatial_shape=(8, 8, 8), affine=np.eye(4))
        self.mode = mode

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rec = x if self.mode == "identity" else x.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(x)
        return rec, x.mean(dim=(2, 3, 4))


def _batch(same_partner: bool = True) -> dict:
    torch.manual_seed(0)
    target = torch.rand(2, 1, 16, 16, 16)
    other = target if same_partner else torch.rand(2, 1, 16, 16, 16)
    return {
        "image": MetaTensor(torch.cat([target, other], dim=1), affine=torch.eye(4)),  # (B, K=2, H, W, D)
        "modality_index": torch.tensor([[modality_index("t1"), modality_index("t2")]] * 2),
        "partner": torch.tensor([[1, 0]] * 2),
    }


def test_reconstruction_ratio_is_zero_for_a_perfect_and_one_for_a_mean_reconstruction():
    batch = _batch(same_partner=True)  # the partner fill equals the target, so the identity reconstructs it
    perfect = reconstruction_mse_ratio(_StubPretrainModel("identity"), [batch], mask_ratio=0.5, block_size=4)
    assert perfect["ratio"] == pytest.approx(0.0, abs=1e-9) and perfect["crops"] == 4
    mean = reconstruction_mse_ratio(_StubPretrainModel("mean"), [batch], mask_ratio=0.5, block_size=4)
    assert mean["ratio"] == pytest.approx(1.0, rel=1e-5)
    assert mean["mean_fill_mse"] > 0
    # an unrelated partner makes the identity worse than the mean: the ratio is not bounded by 1
    wrong = reconstruction_mse_ratio(_StubPretrainModel("identity"), [_batch(False)], mask_ratio=0.5, block_size=4)
    assert wrong["ratio"] > 1.0
    plain = {**batch, "image": batch["image"].as_tensor()}
    with pytest.raises(TypeError, match="MetaTensor"):  # no affine: the template fill could not be placed
        reconstruction_mse_ratio(_StubPretrainModel("mean"), [plain])


def test_reconstruction_ratio_of_a_real_model_is_finite_and_seeded():
    model = brainmvp_pretrain_model("tiny", template_shape=(8, 8, 8), template_affine=np.eye(4) * 4)
    batch = _batch(False)
    first = reconstruction_mse_ratio(model, [batch], seed=3)
    second = reconstruction_mse_ratio(model, [batch], seed=3)
    assert math.isfinite(first["ratio"]) and first["ratio"] == pytest.approx(second["ratio"])
    assert model.training  # restored


def test_template_parameter_group_has_its_own_learning_rate():
    model = brainmvp_pretrain_model("tiny", template_shape=(8, 8, 8))
    groups = model.parameter_groups(0.001, template_learning_rate=0.05, template_weight_decay=0.0)
    assert [g["name"] for g in groups] == ["network", "templates"]
    assert groups[1]["params"] == [model.templates.weight] and groups[1]["lr"] == 0.05
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["lr"] == 0.001
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert model.parameter_groups(0.001)[1]["lr"] == 0.001  # the authors' single learning rate by default
    with pytest.raises(ValueError, match="positive"):
        model.parameter_groups(0.001, template_learning_rate=0.0)


# ---------------------------------------------------------------------------------------------------- summary
def _inputs(wt: float = 0.9):
    pretrain = {"reconstruction_mse_ratio": 0.4, "templates_r": {"t1": 0.7, "t1c": 0.65, "t2": 0.8, "flair": 0.61}}
    missing = {m: {"TC": 0.7, "WT": 0.82, "ET": 0.6} for m in ("t1", "t1c", "t2", "flair")}
    baseline = {m: {"tc": 0.3, "wt": 0.5, "et": 0.1} for m in ("t1", "t1c", "t2", "flair")}
    dice = {
        "all_modalities": {"tc": 0.8, "wt": wt, "et": 0.7},
        "missing": {"templates": missing, "zeros": baseline, "mean": baseline},
    }
    cls = {"accuracy": 0.85, "balanced_accuracy": 0.84, "auc": 0.93, "f1": 0.8, "num_cases": 16}
    return pretrain, dice, cls, {"cohorts": 60, "pretrain": 180}


def test_summary_schema_and_targets():
    summary = build_learning_summary(*_inputs(), seg_cases=4)
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["seg_dice_all"] == {"tc": 0.8, "wt": 0.9, "et": 0.7}
    assert summary["seg_dice_missing"]["t1c"] == {"tc": 0.7, "wt": 0.82, "et": 0.6}
    assert set(summary["seg_dice_missing"]) == {"t1", "t1c", "t2", "flair"}
    assert summary["seg_dice_missing_baselines"]["zeros"]["t2"]["wt"] == 0.5
    assert set(summary["seg_dice_missing_baselines"]) == {"zeros", "mean"}
    assert {"seg_dice_missing.t1.wt", "seg_dice_missing.t1c.tc"} <= set(summary["targets"])
    assert set(summary["cls"]) == {"accuracy", "balanced_accuracy", "auc", "num_cases"}
    assert set(summary["templates_r"]) == {"t1", "t1c", "t2", "flair"}
    assert summary["seconds"]["total"] == 240 and summary["seg_cases"] == 4
    assert set(summary["targets"]) == set(TARGETS)
    assert all(t["met"] for t in summary["targets"].values())
    json.dumps(summary)  # serialisable as written

    failing = build_learning_summary(*_inputs(wt=0.5))
    assert not failing["targets"]["seg_dice_all.wt"]["met"]
    assert sum(not t["met"] for t in failing["targets"].values()) == 1
    table = summary_table(failing)
    assert "seg_dice_all.wt" in table and "NO" in table and f"{len(TARGETS) - 1} of {len(TARGETS)}" in table


def test_seeds_table_gives_mean_spread_and_how_often_each_target_is_met():
    summaries = {0: build_learning_summary(*_inputs(wt=0.9)), 1: build_learning_summary(*_inputs(wt=0.5))}
    table = seeds_table(summaries)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()[2:]}
    assert rows["`seg_dice_all.wt`"] == ["0.900", "0.500", "0.700 ± 0.283", ">= 0.85", "1 of 2"]
    assert rows["`cls.auc`"][-1] == "2 of 2"
    assert set(f"`{key}`" for key in TARGETS) <= set(rows)
    assert "`seg_dice_missing_baselines.zeros.t2.wt`" in rows  # reported beside the targets


def test_summary_treats_undefined_figures_as_unmet_and_names_missing_inputs():
    pretrain, dice, cls, seconds = _inputs()
    cls["auc"] = float("nan")
    summary = build_learning_summary(pretrain, dice, cls, seconds)
    assert summary["cls"]["auc"] is None and not summary["targets"]["cls.auc"]["met"]
    with pytest.raises(KeyError, match="'missing'"):
        build_learning_summary(pretrain, {"all_modalities": dice["all_modalities"]}, cls, seconds)
    no_t2 = {**dice, "missing": {**dice["missing"], "mean": {"t1": dice["missing"]["mean"]["t1"]}}}
    with pytest.raises(KeyError, match="mean/t1c"):
        build_learning_summary(pretrain, no_t2, cls, seconds)
    with pytest.raises(KeyError, match="region"):
        build_learning_summary(pretrain, {**dice, "all_modalities": {"tc": 1.0}}, cls, seconds)


# ---------------------------------------------------------------------------------------------------- figures
def _png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves_handler_records_losses_and_validation(tmp_path):
    from monai.engines import Evaluator

    class _Validator(Evaluator):
        def _iteration(self, engine, batchdata):
            return {}

    curves = TrainingCurvesHandler(tmp_path, output_transform=lambda out: out["loss"])
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(1.0 / engine.state.iteration)})
    curves.attach(trainer)
    evaluator = _Validator(device="cpu", val_data_loader=[0], epoch_length=1, decollate=False)
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_mean_dice=0.1 * e.state.epoch)
    )
    curves.attach(evaluator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=2), lambda engine: evaluator.run(engine.state.epoch))

    trainer.run(range(3), max_epochs=4)
    history = json.loads((tmp_path / "training_curves.json").read_text())
    train = [r for r in history if "train_loss" in r]
    assert [r["epoch"] for r in train] == [1, 2, 3, 4]
    assert train[0]["train_loss"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    validation = [r for r in history if "val_mean_dice" in r]
    assert [r["epoch"] for r in validation] == [2, 4]
    assert validation[-1]["val_mean_dice"] == pytest.approx(0.4)
    assert _png(tmp_path / "training_curves.png")


def test_template_evolution_handler_snapshots_from_initialisation(tmp_path):
    templates = ModalityTemplates(["t1", "t2", "pd"], spatial_shape=(6, 7, 5), affine=np.eye(4))
    handler = TemplateEvolutionHandler(templates, tmp_path, interval=2, max_columns=3)
    engine = Engine(lambda engine, batch: templates.weight.data[:2].add_(1.0))  # pd never trains
    handler.attach(engine)
    engine.run(range(1), max_epochs=5)
    saved = np.load(tmp_path / "template_evolution.npz")
    assert saved["epochs"].tolist() == [0, 2, 4, 5]
    assert saved["t1"].shape == (4, 6, 7) and not saved["t1"][0].any() and saved["t1"][-1].max() == 5
    assert _png(tmp_path / "template_evolution.png")


def test_segmentation_comparison_uses_the_slice_with_most_tumour(tmp_path):
    image = np.random.default_rng(0).random((12, 12, 10)).astype(np.float32)
    reference = np.zeros((12, 12, 10), np.uint8)
    reference[3:9, 3:9, 7] = 2
    prediction = np.zeros_like(reference)
    prediction[4:6, 4:6, 2] = 1
    assert tumour_slice(reference, prediction) == 7
    assert tumour_slice(np.zeros_like(reference)) == -1
    path = save_segmentation_comparison(image, reference, {"all": prediction}, tmp_path / "c.png")
    assert _png(path)
    with pytest.raises(ValueError, match="shape"):
        save_segmentation_comparison(image, reference, {"bad": prediction[:5]}, tmp_path / "d.png")


def test_demo_summary_script_writes_summary(tmp_path, repo_root, subprocess_env, python_executable):
    import subprocess

    pretrain, dice, cls, seconds = _inputs()
    runs = tmp_path / "runs"
    for rel, doc in (
        ("pretrain/eval/metrics.json", pretrain),
        ("seg/demo/dice_summary.json", {**dice, "cases": {"all_modalities": ["a", "b", "c", "d"]}}),
        ("cls/eval/metrics.json", cls),
    ):
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        (runs / rel).write_text(json.dumps(doc))
    script = str(repo_root / "scripts" / "demo_summary.py")

    def demo_summary(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python_executable, script, *args], capture_output=True, text=True, env=subprocess_env)

    for stage, value in seconds.items():
        recorded = demo_summary("record-seconds", "--file", str(tmp_path / "s.json"), "--stage", stage, "--seconds",
                                str(value))  # fmt: skip
        assert recorded.returncode == 0, recorded.stderr
    result = demo_summary("write", "--out", str(tmp_path), "--runs", str(runs), "--seconds", str(tmp_path / "s.json"),
                          "--total", "250")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seconds"] == {"cohorts": 60.0, "pretrain": 180.0, "total": 250.0}
    assert summary["seg_cases"] == 4 and "targets met" in result.stdout
    missing = demo_summary("write", "--out", str(tmp_path), "--runs", str(tmp_path / "none"), "--seconds",
                           str(tmp_path / "s.json"))  # fmt: skip
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    met = all(r["met"] for r in summary["targets"].values())
    required = demo_summary("write", "--out", str(tmp_path), "--runs", str(runs), "--seconds", str(tmp_path / "s.json"),
                            "--total", "250", "--seed", "2", "--require-targets")  # fmt: skip
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 2
    assert required.returncode == (0 if met else 3), required.stderr
    # a run over the demo's time budget misses a target: the required run fails and names it
    late = demo_summary("write", "--out", str(tmp_path), "--runs", str(runs), "--seconds", str(tmp_path / "s.json"),
                        "--total", "5000", "--require-targets")  # fmt: skip
    assert late.returncode == 3 and "seconds.total" in late.stderr


def test_template_range_floor_bounds_the_first_gradient():
    """A zero template's crop has no range: its gradient is divided by the floor (a million-fold amplification
    with the numerical default, none with a floor of 1), while crops with a larger range normalise as before."""

    def first_gradient(floor: float) -> torch.Tensor:
        model = brainmvp_pretrain_model("tiny", template_shape=(8, 8, 8), template_affine=np.eye(4),
                                        template_range_floor=floor)  # fmt: skip
        crop = model.templates.crop(torch.tensor([0]), np.eye(4), (4, 4, 4))
        assert not crop.any()
        (crop * torch.linspace(0, 1, crop.numel()).reshape(crop.shape)).sum().backward()
        return model.templates.weight.grad[0, :4, :4, :4]

    amplified, floored = first_gradient(1e-6), first_gradient(1.0)
    assert 0 < floored.abs().max() <= 64 and amplified.abs().max() >= 1e5
    model = brainmvp_pretrain_model("tiny", template_shape=(8, 8, 8), template_affine=np.eye(4),
                                    template_range_floor=1.0)  # fmt: skip
    with torch.no_grad():
        model.templates.weight.uniform_(0.0, 5.0, generator=torch.Generator().manual_seed(0))
    crop = model.templates.crop(torch.tensor([0]), np.eye(4), (4, 4, 4))
    assert crop.min().item() == 0.0 and crop.max().item() == pytest.approx(1.0)  # plain min-max above the floor
