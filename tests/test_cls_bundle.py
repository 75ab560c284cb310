"""End-to-end tests of the brainmvp_adni_cls bundle on the embedded ADNI-style cohort (quick settings, CPU)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from brainmvp_components.data.atlas import atlas_grid
from brainmvp_components.networks.classifier import BrainMVPClassifier
from brainmvp_components.networks.templates import ModalityTemplates
from brainmvp_components.networks.uniformer import uniformer_tiny

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "brainmvp_adni_cls" / "configs"


def _configs(*names: str) -> str:
    return str([str(CONFIGS / name) for name in names])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, adni_cohort) -> dict[str, Path]:
    """A copy of the cohort, a bundle root, and tiny pre-training outputs (encoder.pt, a t1 template)."""
    root = tmp_path_factory.mktemp("adni_cls")
    data = root / "data"
    shutil.copytree(adni_cohort, data, ignore=shutil.ignore_patterns("datalist.json", ".datalist.lock"))
    pretrain = root / "pretrain"
    pretrain.mkdir()
    torch.manual_seed(0)
    encoder = uniformer_tiny(in_channels=1)
    torch.save(encoder.state_dict(), pretrain / "encoder.pt")
    shape, affine = atlas_grid(4.0)
    templates = ModalityTemplates(["t1"], spatial_shape=shape, affine=affine)
    with torch.no_grad():
        templates.weight.copy_(torch.rand(templates.weight.shape, generator=torch.Generator().manual_seed(0)))
    templates.export_nifti(pretrain / "templates", montage=False)
    return {"root": root, "data": data, "bundle": root / "bundle", "pretrain": pretrain}


def _run(python_executable, subprocess_env, repo_root, configs: str, *overrides: str) -> str:
    command = [
        python_executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        *overrides,
    ]
    result = subprocess.run(
        command, cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


@pytest.fixture(scope="module")
def trained(workspace, python_executable, subprocess_env, repo_root) -> str:
    """Fine-tune with quick settings from the tiny encoder, with block-fill pair augmentation and layer decay."""
    return _run(
        python_executable,
        subprocess_env,
        repo_root,
        _configs("train.json", "quick.json"),
        "--bundle_root",
        str(workspace["bundle"]),
        "--dataset_dir",
        str(workspace["data"]),
        "--pretrained_encoder",
        str(workspace["pretrain"] / "encoder.pt"),
        "--templates_dir",
        str(workspace["pretrain"] / "templates"),
        "--layer_decay",
        "0.8",
    )


def test_train_quick(workspace, trained):
    # the pre-trained encoder was used: every one of its tensors loaded (single-channel input, so the stem fits),
    # and the run does not fall back to training from scratch
    encoder_file = workspace["pretrain"] / "encoder.pt"
    loaded = re.findall(rf"{re.escape(str(encoder_file))} \([^)]*\): loaded (\d+) tensors", trained)
    assert loaded == [str(len(torch.load(encoder_file, weights_only=True)))], loaded
    assert "from scratch" not in trained
    assert "loaded frozen modality templates ['t1']" in trained  # template block filling was on
    model = workspace["bundle"] / "models" / "model.pt"
    state = torch.load(model, map_location="cpu", weights_only=True)
    net = BrainMVPClassifier(uniformer_tiny(in_channels=1), num_classes=2)
    net.load_state_dict(state)  # a plain state dict of the classifier
    assert sorted((workspace["bundle"] / "models" / "checkpoints").glob("checkpoint_epoch=*.pt"))
    assert list((workspace["bundle"] / "eval").glob("events.out.tfevents.*"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate(workspace, trained, python_executable, subprocess_env, repo_root):
    _run(
        python_executable,
        subprocess_env,
        repo_root,
        _configs("train.json", "evaluate.json", "quick.json"),
        "--bundle_root",
        str(workspace["bundle"]),
        "--dataset_dir",
        str(workspace["data"]),
    )
    out = workspace["bundle"] / "eval"
    datalist = json.loads((workspace["data"] / "datalist.json").read_text())
    test_cases = sorted(entry["case"] for entry in datalist["test"])
    rows = _rows(out / "predictions.csv")
    assert sorted(r["case"] for r in rows) == test_cases
    labels = {entry["case"]: entry["label"] for entry in datalist["test"]}
    assert all(int(r["label"]) == labels[r["case"]] for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == len(test_cases)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["balanced_accuracy"] <= 1.0
    assert np.array(metrics["confusion_matrix"]).sum() == len(test_cases)
    assert {r["metric"] for r in _rows(out / "metrics.csv")} >= {"accuracy", "balanced_accuracy", "f1", "auc"}


def test_inference(workspace, trained, python_executable, subprocess_env, repo_root):
    out = workspace["root"] / "inference"
    _run(
        python_executable,
        subprocess_env,
        repo_root,
        _configs("inference.json", "quick.json"),
        "--bundle_root",
        str(workspace["bundle"]),
        "--dataset_dir",
        str(workspace["data"]),
        "--output_dir",
        str(out),
    )
    cases = sorted(p.name for p in workspace["data"].iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = _rows(out / "predictions.csv")
    assert sorted(r["case"] for r in rows) == cases  # one row per case
    for row in rows:
        assert float(row["prob_CN"]) + float(row["prob_AD"]) == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] in ("CN", "AD")
    document = json.loads((out / "predictions.json").read_text())
    assert [c["case"] for c in document["cases"]] == [r["case"] for r in rows]
    assert "label" not in rows[0]


def test_operating_point_chosen_then_used_by_evaluation(workspace, trained, python_executable, subprocess_env,
                                                        repo_root):  # fmt: skip
    bundle = workspace["bundle"]
    common = ("--bundle_root", str(bundle), "--dataset_dir", str(workspace["data"]))
    # the tiny cohort's validation split may hold one class: calibrate on the training split here
    _run(python_executable, subprocess_env, repo_root, _configs("train.json", "evaluate.json", "quick.json",
         "calibrate.json"), *common, "--eval_split", "training")  # fmt: skip
    record = json.loads((bundle / "models" / "operating_point.json").read_text())
    assert 0 < record["threshold"] < 1 and record["positive_class"] == "AD" and len(record["model_sha256"]) == 64
    assert (bundle / "eval" / "validation" / "predictions.csv").is_file()
    try:
        _run(python_executable, subprocess_env, repo_root, _configs("train.json", "evaluate.json", "quick.json"),
             *common, "--output_dir", str(workspace["root"] / "eval_at_operating_point"))  # fmt: skip
        out = workspace["root"] / "eval_at_operating_point"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["threshold"] == pytest.approx(record["threshold"])
        for row in _rows(out / "predictions.csv"):
            assert int(row["predicted_label"]) == int(float(row["prob_AD"]) >= record["threshold"])
    finally:
        (bundle / "models" / "operating_point.json").unlink()


def test_check_properties_and_metadata(workspace):
    common = {"bundle_root": str(workspace["bundle"]), "dataset_dir": str(workspace["data"]), "logging_file": False}
    for files, workflow_type in (
        (["train.json", "quick.json"], "train"),
        (["inference.json", "quick.json"], "infer"),
    ):
        workflow = ConfigWorkflow(
            config_file=[str(CONFIGS / f) for f in files],
            meta_file=str(CONFIGS / "metadata.json"),
            workflow_type=workflow_type,
            cache_rate=0.0,
            **common,
        )
        workflow.initialize()
        assert workflow.check_properties() == [], files
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    for name in ("train.json", "inference.json"):
        config = json.loads((CONFIGS / name).read_text())
        assert [channel_def[str(i)] for i in range(len(channel_def))] == config["class_names"]


@pytest.mark.slow
def test_multi_gpu_config_on_cpu(workspace, tmp_path, subprocess_env, repo_root):
    """`multi_gpu_train.json` under torchrun with two CPU processes (gloo): one model, saved once, unwrapped."""
    import sys

    bundle = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run",
        "--config_file", _configs("train.json", "multi_gpu_train.json", "quick.json"),
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--bundle_root", str(bundle), "--dataset_dir", str(workspace["data"]),
        "--max_epochs", "1", "--epoch_length", "2", "--val_interval", "1",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(key.startswith("module.") for key in state)
    BrainMVPClassifier(uniformer_tiny(in_channels=1), num_classes=2).load_state_dict(state)
    assert output.count("val_auc") >= 1
