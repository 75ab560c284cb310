"""The masked-image-modelling baseline of the pre-training engine (``objective="mae"``) on a tiny model (CPU)."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from brainmvp_components.data.atlas import atlas_grid
from brainmvp_components.engines.pretrain import BrainMVPPretrainTrainer, compute_pretrain_losses
from brainmvp_components.losses.contrastive import InfoNCELoss
from brainmvp_components.networks.pretrain import brainmvp_pretrain_model
from brainmvp_components.transforms.masking import random_block_mask

ROI = (16, 16, 16)
SPACING = 4.0


def _model(learn_templates: bool = True):
    torch.manual_seed(0)
    shape, affine = atlas_grid(SPACING)
    return brainmvp_pretrain_model(
        "tiny", template_shape=shape, template_affine=affine, learn_templates=learn_templates
    )


def _affine() -> torch.Tensor:
    _, affine = atlas_grid(SPACING)
    affine = torch.as_tensor(affine, dtype=torch.float64).clone()
    affine[:3, 3] = affine[:3, :3] @ torch.tensor([10.0, 12.0, 8.0], dtype=torch.float64) + affine[:3, 3]
    return affine


class Recorder(torch.nn.Module):
    """Wraps the model and keeps the views it was given."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.templates = model.templates
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def _no_template_crops(model, monkeypatch):
    def crop(*args, **kwargs):
        raise AssertionError("the MAE objective must not crop a template")

    monkeypatch.setattr(model.templates, "crop", crop)


def test_mae_reconstructs_the_zero_filled_view_without_templates(monkeypatch):
    model = _model()
    _no_template_crops(model, monkeypatch)
    recorder = Recorder(model)
    images = torch.rand(2, 2, *ROI) + 0.5  # no voxel is 0, so the zero fill is recognisable
    mask = random_block_mask(4, ROI, 8, 0.5, generator=torch.Generator().manual_seed(0))
    partner = torch.tensor([[1, 0], [1, 0]])
    out = compute_pretrain_losses(
        recorder, images, torch.tensor([[0, 3], [1, 2]]), partner, _affine(), mask=mask, objective="mae"
    )
    target = images.reshape(4, 1, *ROI)
    (view,) = recorder.inputs  # one view per target, one forward pass
    assert view.shape == (4, 1, *ROI)
    torch.testing.assert_close(view[~mask], target[~mask])  # visible voxels pass unchanged
    assert torch.all(view[mask] == 0)  # masked voxels hold the fill, never another modality or a template
    torch.testing.assert_close(out["loss"], torch.nn.functional.mse_loss(out["rec_a"], target))
    for key in ("loss_md", "loss_cmr", "loss_cl"):
        assert float(out[key]) == 0.0
    out["loss"].backward()
    assert model.templates.weight.grad is None  # the templates take no part
    assert any(p.grad is not None for p in model.encoder.parameters())  # the encoder learns from the view


def test_mae_mean_fill_is_the_mean_of_the_visible_voxels():
    model = _model()
    recorder = Recorder(model)
    images = torch.rand(1, 2, *ROI)
    mask = random_block_mask(2, ROI, 8, 0.5, generator=torch.Generator().manual_seed(1))
    compute_pretrain_losses(
        recorder,
        images,
        torch.tensor([[0, 1]]),
        torch.tensor([[1, 0]]),
        _affine(),
        mask=mask,
        objective="mae",
        mae_fill="mean",
    )
    target, view = images.reshape(2, 1, *ROI), recorder.inputs[0]
    for row in range(2):  # each crop is filled with the mean of its own visible voxels
        expected = target[row][~mask[row]].mean()
        torch.testing.assert_close(view[row][mask[row]], expected.expand(int(mask[row].sum())))


def test_mae_rejects_a_contrastive_term_and_unknown_settings():
    model = _model()
    args = (model, torch.rand(1, 2, *ROI), torch.tensor([[0, 1]]), torch.tensor([[1, 0]]), _affine())
    with pytest.raises(ValueError, match="no contrastive term"):
        compute_pretrain_losses(*args, objective="mae", contrastive_loss=InfoNCELoss(gather_distributed=False))
    with pytest.raises(ValueError, match="objective"):
        compute_pretrain_losses(*args, objective="simclr")
    with pytest.raises(ValueError, match="mae_fill"):
        compute_pretrain_losses(*args, objective="mae", mae_fill="noise")


def test_mae_trainer_never_uses_templates_or_the_contrastive_term():
    model = _model(learn_templates=False)
    assert not model.templates.weight.requires_grad
    generator = torch.Generator().manual_seed(0)
    batches = [
        list_data_collate(
            [
                {
                    "image": MetaTensor(torch.rand(2, *ROI, generator=generator), affine=_affine()),
                    "modality_index": torch.tensor([0, 3]),
                    "partner": torch.tensor([1, 0]),
                }
            ]
        )
        for _ in range(2)
    ]
    trainer = BrainMVPPretrainTrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=batches,
        network=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        contrastive_loss=InfoNCELoss(gather_distributed=False),
        contrastive_start_epoch=1,
        objective="mae",
    )
    assert trainer.schedule(2)["contrastive_loss"] is None
    decoder_before = model.decoder.out_1.conv.conv.weight.detach().clone()
    trainer.run()
    assert torch.count_nonzero(model.templates.weight) == 0  # zero-initialised, never filled, never trained
    assert not torch.equal(decoder_before, model.decoder.out_1.conv.conv.weight)  # the network learns
    metrics = trainer.state.metrics
    assert metrics["train_loss"] > 0 and metrics["train_loss_md"] == metrics["train_loss_cl"] == 0
