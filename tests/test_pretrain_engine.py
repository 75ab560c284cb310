"""Pre-training iteration, modality sampling and resumable checkpoints on a tiny model (CPU, 16^3 crops)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import MetaTensor, list_data_collate

from brainmvp_components.data.atlas import atlas_grid
from brainmvp_components.engines.pretrain import LOSS_KEYS, BrainMVPPretrainTrainer, compute_pretrain_losses
from brainmvp_components.losses.contrastive import InfoNCELoss
from brainmvp_components.networks.pretrain import brainmvp_pretrain_model
from brainmvp_components.transforms.pretrain import NO_PARTNER, SampleModalities, SampleModalitiesd
from brainmvp_components.utils.writers import atomic_torch_save
from brainmvp_components.weights.checkpoints import (
    BestModelSaver,
    ResumableCheckpoint,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
)

ROI = (16, 16, 16)
SPACING = 4.0


def _model(seed: int = 0):
    torch.manual_seed(seed)
    shape, affine = atlas_grid(SPACING)
    model = brainmvp_pretrain_model("tiny", template_shape=shape, template_affine=affine)
    with torch.no_grad():  # non-constant templates, so template fills are recognisable
        model.templates.weight.copy_(torch.rand_like(model.templates.weight))
    return model


def _crop_affine(offset_voxels=(10, 10, 8)) -> torch.Tensor:
    """Affine of a crop inside the atlas field of view, on the 4 mm template grid."""
    _, affine = atlas_grid(SPACING)
    affine = torch.as_tensor(affine, dtype=torch.float64).clone()
    affine[:3, 3] = affine[:3, :3] @ torch.tensor(offset_voxels, dtype=torch.float64) + affine[:3, 3]
    return affine


def _inputs(batch=2, k=3, partner=None, modality_index=None):
    images = torch.rand(batch, k, *ROI)
    if modality_index is None:
        modality_index = torch.tensor([[0, 3, 2], [1, 0, 3]])[:batch, :k]
    if partner is None:
        partner = torch.tensor([[1, 2, 0], [2, 2, 1]])[:batch, :k]
    affine = torch.stack([_crop_affine((10 + 3 * b, 12, 8)) for b in range(batch)])
    return images, modality_index, partner, affine


class CountingLoss(InfoNCELoss):
    def __init__(self):
        super().__init__(gather_distributed=False)
        self.calls = 0

    def forward(self, a, b):
        self.calls += 1
        return super().forward(a, b)


def test_views_losses_and_template_crops():
    model = _model()
    images, modality_index, partner, affine = _inputs()
    out = compute_pretrain_losses(model, images, modality_index, partner, affine, contrastive_loss=CountingLoss())
    for key in LOSS_KEYS:
        assert out[key].ndim == 0 and torch.isfinite(out[key]), key
    torch.testing.assert_close(out["loss"], 10 * out["loss_md"] + out["loss_cmr"] + out["loss_cl"])
    n = images.shape[0] * images.shape[1]
    mask, target = out["mask"], out["target"]
    assert mask.shape == (n, 1, *ROI) and 0.7 < mask.float().mean() < 0.9
    # view A: template of the target's modality at the crop's location where masked, the target elsewhere
    expected = model.templates.crop(modality_index.reshape(-1), affine.repeat_interleave(3, 0), ROI)
    torch.testing.assert_close(out["fill_a"], expected)
    torch.testing.assert_close(out["view_a"][mask], expected[mask])
    torch.testing.assert_close(out["view_a"][~mask], target[~mask])
    # view B: the co-located partner channel of the same case where masked
    flat_partner = (partner + torch.arange(2)[:, None] * 3).reshape(-1)
    partner_images = target[flat_partner]
    torch.testing.assert_close(out["view_b"][mask], partner_images[mask])
    torch.testing.assert_close(out["view_b"][~mask], target[~mask])
    assert out["rec_a"].shape == out["rec_b"].shape == (n, 1, *ROI)


def test_warmup_fills_view_b_with_templates():
    model = _model()
    images, modality_index, partner, affine = _inputs()
    out = compute_pretrain_losses(model, images, modality_index, partner, affine, template_for_partner=True)
    torch.testing.assert_close(out["view_b"], out["view_a"])
    torch.testing.assert_close(out["loss_md"], out["loss_cmr"])


def test_contrastive_off_before_start_is_not_computed():
    model = _model()
    images, modality_index, partner, affine = _inputs()
    counting = CountingLoss()
    kwargs = {"mask": torch.rand(6, 1, *ROI) < 0.8}
    off = compute_pretrain_losses(model, images, modality_index, partner, affine, contrastive_loss=None, **kwargs)
    assert float(off["loss_cl"]) == 0.0
    torch.testing.assert_close(off["loss"], 10 * off["loss_md"] + off["loss_cmr"])
    on = compute_pretrain_losses(model, images, modality_index, partner, affine, contrastive_loss=counting, **kwargs)
    assert counting.calls == 1 and float(on["loss_cl"]) > 0

    trainer = _trainer(model, [], contrastive_start_epoch=3, template_warmup_epochs=1, contrastive_loss=counting)
    assert trainer.schedule(1) == {"template_for_partner": True, "contrastive_loss": None}
    assert trainer.schedule(2) == {"template_for_partner": False, "contrastive_loss": None}
    assert trainer.schedule(3)["contrastive_loss"] is counting


def test_gradients_reach_templates_through_view_a():
    model = _model()
    images, modality_index, partner, affine = _inputs()
    out = compute_pretrain_losses(model, images, modality_index, partner, affine)
    out["loss_md"].backward()
    grad = model.templates.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    used = set(modality_index.reshape(-1).tolist())
    for row in range(grad.shape[0]):  # only the targets' modalities receive gradient
        assert (grad[row].abs().sum() > 0) == (row in used)


def test_single_modality_cases_fall_back_to_templates():
    model = _model()
    images, _, _, affine = _inputs(k=2)
    modality_index = torch.tensor([[3, 3], [0, 2]])
    partner = torch.tensor([[NO_PARTNER, NO_PARTNER], [1, 0]])
    out = compute_pretrain_losses(model, images, modality_index, partner, affine)
    assert all(torch.isfinite(out[k]) for k in LOSS_KEYS)
    torch.testing.assert_close(out["view_b"][:2], out["view_a"][:2])  # case 0: template fill for both views
    mask = out["mask"][2:]
    torch.testing.assert_close(out["view_b"][2:][mask], out["target"].flip(0)[:2][mask])


def test_bad_inputs_raise():
    model = _model()
    images, modality_index, partner, affine = _inputs()
    with pytest.raises(ValueError, match="partner"):
        compute_pretrain_losses(model, images, modality_index, partner + 5, affine)
    with pytest.raises(ValueError, match="images"):
        compute_pretrain_losses(model, images[0], modality_index, partner, affine)


# ----------------------------------------------------------------------------------------------- the trainer
def _batches(num_batches: int, batch: int = 1, k: int = 2) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(num_batches):
        items = []
        for b in range(batch):
            image = MetaTensor(torch.rand(k, *ROI, generator=generator), affine=_crop_affine((10 + b, 12, 8)))
            items.append({"image": image, "modality_index": torch.tensor([0, 3][:k]), "partner": torch.tensor([1, 0])})
        batches.append(list_data_collate(items))
    return batches


def _trainer(model, loader, **kwargs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return BrainMVPPretrainTrainer(
        device="cpu", max_epochs=kwargs.pop("max_epochs", 1), train_data_loader=loader, network=model,
        optimizer=optimizer, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("num_iterations, expected_steps", [(4, 2), (3, 2)])
def test_gradient_accumulation_steps_every_n_iterations(num_iterations, expected_steps):
    model = _model()
    trainer = _trainer(model, _batches(num_iterations), gradient_accumulation_steps=2, template_warmup_epochs=0)
    steps = []
    original_step = trainer.optimizer.step

    def counting_step(*args, **kwargs):
        steps.append(trainer.state.iteration)
        return original_step(*args, **kwargs)

    trainer.optimizer.step = counting_step
    before = model.templates.weight.detach().clone()
    trainer.run()
    assert len(steps) == expected_steps
    assert steps[0] == 2  # every second iteration, plus a flush at the end of an odd-length epoch
    assert not torch.equal(before, model.templates.weight)  # the templates learn
    output = trainer.state.output[0]
    assert set(LOSS_KEYS) | {"lr"} <= set(output)
    assert {f"train_{k}" for k in LOSS_KEYS} <= set(trainer.state.metrics)


def test_trainer_requires_metatensor_batches():
    model = _model()
    batch = _batches(1)[0]
    batch["image"] = batch["image"].as_tensor()
    trainer = _trainer(model, [batch])
    with pytest.raises(TypeError, match="MetaTensor"):
        trainer.prepare_pretrain_batch(batch)


# ------------------------------------------------------------------------------------------ modality sampling
def test_sample_modalities_partners_differ():
    sampler = SampleModalities(num_samples=4)
    sampler.set_random_state(0)
    image = MetaTensor(torch.arange(3.0)[:, None, None, None].expand(3, 4, 4, 4), affine=torch.eye(4) * 2)
    for _ in range(10):
        out, index, partner = sampler(image, torch.tensor([0, 1, 3]))
        assert out.shape == (4, 4, 4, 4) and isinstance(out, MetaTensor)
        assert set(index.tolist()) == {0, 1, 3}  # a case with fewer channels uses each of them
        assert torch.all(partner >= 0) and torch.all(index[partner] != index)
        torch.testing.assert_close(out.affine, image.affine)
        channel = out[:, 0, 0, 0].long()  # channel c holds the value c: output rows match the modality indices
        torch.testing.assert_close(torch.tensor([0, 1, 3])[channel], index)


def test_sample_modalities_dict_single_modality_and_errors():
    transform = SampleModalitiesd(keys="image", num_samples=3)
    transform.set_random_state(1)
    data = {"image": torch.rand(1, 4, 4, 4), "modality_index": torch.tensor([2]), "modalities": ["t2"]}
    out = transform(data)
    assert out["image"].shape == (3, 4, 4, 4)
    assert out["partner"].tolist() == [NO_PARTNER] * 3 and out["modalities"] == ["t2"] * 3
    out = transform({"image": torch.rand(5, 4, 4, 4), "modality_index": torch.tensor([0, 1, 2, 3, 4])})
    assert len(set(out["modality_index"].tolist())) == 3  # enough channels: drawn without replacement
    with pytest.raises(ValueError, match="one modality per channel"):
        transform({"image": torch.rand(2, 4, 4, 4), "modality_index": torch.tensor([0])})
    with pytest.raises(ValueError, match="num_samples"):
        SampleModalities(0)


# --------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_files(tmp_path):
    assert latest_checkpoint(tmp_path) is None and latest_checkpoint(tmp_path / "absent") is None
    for epoch in (2, 10, 1):
        atomic_torch_save({"epoch": epoch}, checkpoint_path(tmp_path, epoch))
    (tmp_path / "checkpoint_epoch=7.pt.partial").write_text("not a checkpoint")
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1, 2, 10]
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")
    assert not list(tmp_path.glob(".*.tmp"))


def test_resumable_checkpoint_resumes_after_last_epoch(tmp_path):
    batches = _batches(2)
    model = _model()
    trainer = _trainer(model, batches, max_epochs=1, template_warmup_epochs=0)
    sched = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
    handler = ResumableCheckpoint(tmp_path, {"network": model, "optimizer": trainer.optimizer, "lr_scheduler": sched})
    handler.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: sched.step())
    trainer.run()
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=1.pt")
    saved = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    assert saved["trainer"]["iteration"] == 2 and saved["lr_scheduler"]["last_epoch"] == 1  # saved after the step

    fresh = _model(seed=1)
    resumed = _trainer(fresh, batches, max_epochs=3, template_warmup_epochs=0)
    sched2 = torch.optim.lr_scheduler.StepLR(resumed.optimizer, step_size=1, gamma=0.5)
    ResumableCheckpoint(
        tmp_path, {"network": fresh, "optimizer": resumed.optimizer, "lr_scheduler": sched2}, n_saved=1
    ).attach(resumed)
    epochs_run = []
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    loaded = {}
    resumed.add_event_handler(
        Events.EPOCH_STARTED, lambda e: loaded.setdefault("templates", fresh.templates.weight.detach().clone())
    )
    resumed.run()
    assert epochs_run == [2, 3]
    torch.testing.assert_close(loaded["templates"], saved["network"]["templates.weight"])
    assert [e for e, _ in list_checkpoints(tmp_path)] == [3]  # n_saved=1 prunes older ones

    with pytest.raises(ValueError, match="beyond"):
        again = _trainer(_model(), batches, max_epochs=2)
        ResumableCheckpoint(tmp_path, {"network": again.network}).attach(again)
        again.run()


def test_resume_false_starts_over(tmp_path):
    atomic_torch_save({"stale": 1}, checkpoint_path(tmp_path, 5))
    model = _model()
    trainer = _trainer(model, _batches(1), max_epochs=1)
    ResumableCheckpoint(tmp_path, {"network": model}, resume=False).attach(trainer)
    trainer.run()
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1]
    assert np.isclose(torch.load(checkpoint_path(tmp_path, 1), weights_only=True)["trainer"]["iteration"], 1)


def test_best_model_saver_keeps_the_best_of_a_resumed_run_only(tmp_path):
    from ignite.engine import Engine

    network = torch.nn.Linear(2, 1)
    path = tmp_path / "model.pt"

    def validate(resume: bool, metric: float) -> Engine:
        engine = Engine(lambda e, b: None)
        engine.state.best_metric, engine.state.best_metric_epoch = -1.0, -1
        saver = BestModelSaver(network, path, resume=resume)
        saver.restore_best(engine)
        if metric > engine.state.best_metric:  # what MONAI's evaluator does when the key metric improves
            engine.state.best_metric, engine.state.best_metric_epoch = metric, 1
        engine.state.epoch = 1
        saver.save_if_best(engine)
        return engine

    validate(resume=True, metric=0.9)
    assert path.is_file() and json.loads((tmp_path / "model.pt.json").read_text())["metric"] == 0.9
    assert validate(resume=True, metric=0.5).state.best_metric == 0.9  # the earlier best is kept
    assert json.loads((tmp_path / "model.pt.json").read_text())["metric"] == 0.9
    validate(resume=False, metric=0.5)  # a fresh run replaces the earlier run's model
    assert json.loads((tmp_path / "model.pt.json").read_text())["metric"] == 0.5


def test_resume_flag_read_from_the_command_line(tmp_path):
    """``--resume false`` reaches the handler as the string "false": it must start over, not resume."""
    from brainmvp_components.utils.misc import as_flag

    assert as_flag("false", "resume") is False and as_flag("False", "resume") is False
    assert as_flag("true", "resume") is True and as_flag(True, "resume") is True and as_flag(0, "resume") is False
    with pytest.raises(ValueError, match="resume must be true or false"):
        as_flag("maybe", "resume")
    model = torch.nn.Linear(2, 2)
    assert ResumableCheckpoint(save_dir=tmp_path, save_dict={"network": model}, resume="false").resume is False
