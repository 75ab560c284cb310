"""Tests that fail when a model stops learning: each bundle trains for a minute on a tiny cohort, and its curves
and outputs must show the learning a working model shows there (not only that weights changed)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from brainmvp_components.data.datalist import build_datalist, load_datalist, write_datalist
from brainmvp_components.metrics.pretraining import template_correlations

pytestmark = pytest.mark.slow


def _curves(root) -> list[dict]:
    return json.loads((root / "eval" / "training_curves.json").read_text())


def _same_cases_for_training_and_validation(cohort, tmp_path, cases: int | None = None):
    """A datalist (absolute paths) whose training and validation splits are the same ``cases`` of ``cohort``."""
    build_datalist(cohort, tmp_path / "all.json", val_fraction=0.0, test_fraction=0.0, seed=0)
    full = json.loads((tmp_path / "all.json").read_text())
    entries = load_datalist(tmp_path / "all.json")[:cases]
    return write_datalist({**full, "training": entries, "validation": entries, "test": []}, tmp_path / "dl.json")


def _losses(curves: list[dict], key: str) -> list[float]:
    return [row[key] for row in curves if key in row and math.isfinite(row[key])]


def test_segmentation_overfits_two_cases(tmp_path, brats_cohort, run_bundle):
    datalist = _same_cases_for_training_and_validation(brats_cohort, tmp_path, cases=2)
    root = tmp_path / "seg"
    run_bundle(
        "brainmvp_brats_seg", ["train.json", "quick.json"], root, datalist=str(datalist), pretrained_encoder="",
        templates_dir=str(tmp_path / "no_templates"), max_epochs=60, epoch_length=5, val_interval=60, batch_size=2,
        pair_augmentation=False, template_replace_prob=0.0, seed=0,
    )  # fmt: skip
    curves = _curves(root)
    losses = _losses(curves, "loss")
    assert len(losses) == 60 and min(losses[-3:]) <= 0.5 * losses[0], losses
    validation = [row for row in curves if "val_dice_wt" in row]
    assert validation and validation[-1]["val_dice_wt"] > 0.5 and validation[-1]["val_mean_dice"] > 0.5, validation


def test_classifier_separates_a_small_cohort(tmp_path, adni_cohort, run_bundle):
    root = tmp_path / "cls"
    path = _same_cases_for_training_and_validation(adni_cohort, tmp_path)
    run_bundle(
        "brainmvp_adni_cls", ["train.json", "quick.json"], root, datalist=str(path), pretrained_encoder="",
        templates_dir=str(tmp_path / "no_templates"), max_epochs=20, epoch_length=4, val_interval=20, seed=0,
        learning_rate=0.001, pair_augmentation=False,
    )  # fmt: skip
    curves = _curves(root)
    losses = _losses(curves, "loss")
    assert len(load_datalist(path)) == 8 and len(losses) == 20
    # batches of 2 make single epochs noisy; a model stuck at the prior stays at ln 2 = 0.693 in every one
    assert min(losses[10:]) < 0.45, f"the loss stays near ln 2 (the class prior): {losses}"
    validation = [row for row in curves if "val_balanced_accuracy" in row]
    assert validation[-1]["val_balanced_accuracy"] >= 0.875 and validation[-1]["val_auc"] >= 0.9, validation


def test_pretraining_loss_falls_and_templates_approach_the_cohort_mean(tmp_path, pretrain_cohort, run_bundle):
    root = tmp_path / "pretrain"
    data = tmp_path / "data"
    shutil.copytree(pretrain_cohort, data, ignore=shutil.ignore_patterns("datalist.json", ".*"))
    run_bundle(
        "brainmvp_pretrain", ["train.json", "quick.json"], root, dataset_dir=str(data), epochs=40,
        template_warmup_epochs=5, contrastive_start_epoch=100, preview_interval=40, seed=0,
    )  # fmt: skip
    curves = _curves(root)
    reconstruction = _losses(curves, "train_loss_md")
    assert len(reconstruction) == 40
    assert sum(reconstruction[-5:]) / 5 < 0.6 * reconstruction[0], reconstruction
    cases = load_datalist(data / "datalist.json")
    scores = template_correlations(root / "models" / "templates", cases, modalities=["t1", "t2", "flair"])
    # the templates start at zero (no correlation at all); 40 short epochs take them a good part of the way
    assert all(r > 0.2 for r in scores.values()) and sum(scores.values()) / len(scores) > 0.3, scores
