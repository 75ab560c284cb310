"""MONAI Label serves the segmentation bundle unmodified: the bundle's side of it, and the end-to-end check.

The unit tests run in the project's environment and cover what MONAI Label does differently from
``python -m monai.bundle run``: a string under ``image_path`` beside the image, no writer in the postprocessing,
training requests that fine-tune from ``models/model.pt`` beside an earlier run's checkpoints. The last test runs
``scripts/monailabel_check.sh`` (a real server, curl requests) when MONAI Label's environment has been built.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.transforms import Invertd, Spacingd

from brainmvp_components.transforms.impute import SaveModalityRecordd
from brainmvp_components.transforms.io import LoadModalitiesd
from brainmvp_components.transforms.spatial import SafeSpacingd
from brainmvp_components.weights.checkpoints import (
    PREVIOUS_RUN_DIR,
    BestModelSaver,
    ResumableCheckpoint,
    list_checkpoints,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = REPO_ROOT / "scripts" / "monailabel_check.sh"
ML_ENV = Path(os.environ.get("BRAINMVP_MONAILABEL_ENV", Path.home() / ".cache" / "brainmvp" / "monailabel-env"))
MODALITIES = ["t1", "t1c", "t2", "flair"]


def _four_d_image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(rng.random((10, 12, 8, 4), dtype=np.float32), affine), str(path))
    return path


def test_spacing_leaves_monai_label_image_path_alone(tmp_path):
    """MONAI Label's inference data carries the input path under ``image_path``; MONAI 1.6's Spacingd would call
    ``update`` on it. SafeSpacingd resamples as Spacingd does and hands the string back, and Invertd still works."""
    image = _four_d_image(tmp_path / "case.nii.gz")
    load = LoadModalitiesd("image", modalities=MODALITIES, default_modalities=MODALITIES)
    data = load({"image": str(image), "image_path": str(image)})
    safe = SafeSpacingd("image", pixdim=(4.0, 4.0, 4.0), mode="bilinear")
    out = safe(dict(data))
    assert out["image_path"] == str(image)
    reference = Spacingd("image", pixdim=(4.0, 4.0, 4.0), mode="bilinear")({"image": data["image"].clone()})
    assert out["image"].shape == reference["image"].shape
    torch.testing.assert_close(out["image"].affine, reference["image"].affine)
    torch.testing.assert_close(out["image"].as_tensor(), reference["image"].as_tensor())
    out["pred"] = out["image"][:1].clone()
    inverted = Invertd("pred", transform=safe, orig_keys="image", nearest_interp=False)(out)
    assert inverted["pred"].shape[1:] == (10, 12, 8)


def test_modality_record_without_a_writer(tmp_path):
    """MONAI Label drops SaveImaged but keeps the record transform: the record goes to the meta data, no file."""
    image = MetaTensor(torch.zeros(4, 3, 3, 3), meta={"filename_or_obj": str(tmp_path / "case7.nii.gz")})
    image.meta["missing_modalities"] = ["t2"]
    image.meta["imputed_modalities"] = ["t2"]
    pred = MetaTensor(torch.zeros(1, 3, 3, 3), meta={"filename_or_obj": str(tmp_path / "case7.nii.gz")})
    out = SaveModalityRecordd("pred", modalities=MODALITIES)({"image": image, "pred": pred, "image_path": "x"})
    record = out["pred"].meta["modality_record"]
    assert record["case"] == "case7" and record["imputed_modalities"] == ["t2"]
    assert record["modalities_used"] == ["t1", "t1c", "flair"]
    assert not list(tmp_path.iterdir())


def _train(save_dir: Path, network: torch.nn.Module, max_epochs: int, data, validator=None, **kwargs) -> Engine:
    """A tiny trainer with a ResumableCheckpoint, as the bundle configures it, and a record of the epochs run."""
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)

    def step(engine, batch):
        optimizer.zero_grad()
        loss = network(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = Engine(step)
    trainer.epochs_run = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: e.epochs_run.append(e.state.epoch))
    settings = {"training_data": data}
    handler = ResumableCheckpoint(
        save_dir,
        {"network": network, "optimizer": optimizer},
        run_settings=settings,
        check_start_weights=True,
        validator=validator,
        **kwargs,
    )
    handler.attach(trainer)
    trainer.checkpointer = handler
    trainer.run([torch.ones(2, 3)] * 2, max_epochs=max_epochs)
    return trainer


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 1)


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    """The issue's case: an earlier 3-epoch run's checkpoints, then a 1-epoch run that starts from other weights
    (MONAI Label fine-tunes from model.pt): it trains instead of failing or resuming, and a second such run too."""
    data = [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]
    _train(tmp_path, _net(0), 3, data)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [2, 3]

    first = _train(tmp_path, _net(1), 1, data)  # other starting weights: a new run, not "beyond 1 epoch"
    assert first.epochs_run == [1] and first.checkpointer.resumed_from is None
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1]
    assert sorted(p.name for p in (tmp_path / PREVIOUS_RUN_DIR).iterdir()) == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=3.pt",
    ]
    second = _train(tmp_path, _net(2), 1, data)  # the next request starts from the updated model: trains again
    assert second.epochs_run == [1]


def test_same_run_resumes_and_other_settings_start_over(tmp_path):
    data = [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]
    _train(tmp_path, _net(0), 1, data)
    resumed = _train(tmp_path, _net(0), 3, data)  # the same command with more epochs continues
    assert resumed.epochs_run == [2, 3] and resumed.checkpointer.resumed_from.endswith("checkpoint_epoch=1.pt")
    again = _train(tmp_path, _net(0), 3, data)  # a finished run started again has nothing left to do
    assert again.epochs_run == []
    other = _train(tmp_path, _net(0), 1, data + [{"image": "b.nii.gz", "label": "b_seg.nii.gz"}])
    assert other.epochs_run == [1] and other.checkpointer.resumed_from is None


def test_best_metric_comes_back_with_its_own_run_only(tmp_path):
    """The validator's best metric travels in the checkpoint: a resumed run keeps it, a new run starts without it
    (the issue's second MONAI Label request compared against a metric of another validation set)."""
    data = [{"image": "a.nii.gz"}]
    validator = Engine(lambda e, b: None)
    validator.state.best_metric, validator.state.best_metric_epoch = 0.9, 1
    _train(tmp_path, _net(0), 1, data, validator=validator)

    fresh = Engine(lambda e, b: None)
    fresh.state.best_metric, fresh.state.best_metric_epoch = -1, -1
    _train(tmp_path, _net(0), 2, data, validator=fresh)  # resumed: the best so far is its own
    assert fresh.state.best_metric == 0.9

    other = Engine(lambda e, b: None)
    other.state.best_metric, other.state.best_metric_epoch = -1, -1
    _train(tmp_path, _net(5), 1, data, validator=other)  # a new run: no best metric yet, its first model is saved
    assert other.state.best_metric == -1
    path = tmp_path / "model.pt"
    saver = BestModelSaver(torch.nn.Linear(3, 1), path, resume=False)
    other.state.best_metric, other.state.best_metric_epoch, other.state.epoch = 0.2, 1, 1
    saver.save_if_best(other)
    assert json.loads((tmp_path / "model.pt.json").read_text())["metric"] == 0.2


def test_training_curves_attach_to_the_validator():
    """The curves handler reaches the validator through an argument, so no handler list refers to an index of
    another (MONAI Label prepends a CheckpointLoader to train#handlers, which shifts every index)."""
    from brainmvp_components.handlers.curves import TrainingCurvesHandler

    validator = Engine(lambda e, b: None)
    handler = TrainingCurvesHandler("unused", validator=validator)
    handler.attach(Engine(lambda e, b: None))
    assert validator.has_event_handler(handler._validation_completed, Events.EPOCH_COMPLETED)


def test_last_epoch_is_validated():
    """A MONAI Label request for fewer epochs than val_interval still validates once, so it saves a model."""
    from brainmvp_components.handlers.curves import LastEpochValidationHandler

    for max_epochs, interval, expected in ((1, 5, [1]), (7, 5, [7]), (10, 5, [])):
        validated = []
        validator = Engine(lambda e, b: None)
        validator.run = validated.append
        trainer = Engine(lambda e, b: None)
        LastEpochValidationHandler(validator, interval).attach(trainer)
        trainer.run([0], max_epochs=max_epochs)
        assert validated == expected, (max_epochs, interval)


def test_fine_tuning_configs_have_no_index_references():
    for bundle in ("brainmvp_brats_seg", "brainmvp_adni_cls"):
        configs = REPO_ROOT / "bundles" / bundle / "configs"
        for name in ("train.json", "inference.json", "evaluate.json"):
            assert "handlers#" not in (configs / name).read_text(), f"{bundle}/{name}"


@pytest.mark.slow
def test_monailabel_check_script():
    """The end-to-end check: a real MONAI Label server with the stock monaibundle app (about 5 minutes)."""
    if not (ML_ENV / "bin" / "monailabel").is_file():
        pytest.skip(
            f"MONAI Label's environment {ML_ENV} does not exist; build it and run the check with "
            "`bash scripts/monailabel_check.sh` (about 6 GB, installs MONAI Label 0.8.5 and torch 2.14.1)"
        )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRAINMVP_MONAILABEL_ENV": str(ML_ENV)}
    env.pop("BRAINMVP_MONAILABEL_WORK", None)
    result = subprocess.run(["bash", str(CHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=3000)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-10000:]
    assert "FAIL" not in result.stdout and result.stdout.count("PASS") == 8, result.stdout
