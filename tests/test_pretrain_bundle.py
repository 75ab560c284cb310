"""End-to-end runs of the brainmvp_pretrain bundle (quick config, CPU): outputs, MLflow, torchrun, kill and resume.

Every run writes under ``tmp_path`` (``--bundle_root``); the data is the session's ``pretrain_cohort``.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

CONFIGS = ["train.json", "quick.json"]


def _command(python_executable, repo_root, bundle_root, cohort, *extra, configs=CONFIGS, launcher=None):
    config_dir = repo_root / "bundles" / "brainmvp_pretrain" / "configs"
    files = "[" + ",".join(f"'{config_dir / name}'" for name in configs) + "]"
    prefix = launcher or [python_executable]
    return [
        *prefix, "-m", "monai.bundle", "run", "--config_file", files,
        "--bundle_root", str(bundle_root), "--dataset_dir", str(cohort), *extra,
    ]  # fmt: skip


def _run(command, env, cwd, log: Path, timeout=300) -> str:
    with open(log, "w") as out:
        result = subprocess.run(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    assert result.returncode == 0, text[-4000:]
    return text


def test_quick_run_exports_models_templates_and_tracking(
    tmp_path, pretrain_cohort, repo_root, python_executable, subprocess_env
):
    from brainmvp_components.data.atlas import atlas_grid
    from brainmvp_components.networks.pretrain import brainmvp_pretrain_model

    root = tmp_path / "bundle"
    command = _command(python_executable, repo_root, root, pretrain_cohort, "--tracking", "mlflow")
    _run(command, subprocess_env, tmp_path, tmp_path / "run.log")

    models = root / "models"
    quick = json.loads((repo_root / "bundles" / "brainmvp_pretrain" / "configs" / "quick.json").read_text())
    shape, affine = atlas_grid(quick["template_spacing"])
    model = brainmvp_pretrain_model("tiny", template_shape=shape, template_affine=affine)
    model.load_state_dict(torch.load(models / "model.pt", weights_only=True))  # a plain, complete state dict
    encoder_state = torch.load(models / "encoder.pt", weights_only=True)
    assert set(encoder_state) == set(model.encoder.state_dict())
    torch.testing.assert_close(encoder_state, model.encoder.state_dict())
    templates = sorted(p.name for p in (models / "templates").glob("template_*.nii.gz"))
    assert templates == sorted(f"template_{m}.nii.gz" for m in model.templates.modalities)
    assert (models / "templates" / "templates.png").stat().st_size > 0
    evolution = np.load(models / "templates" / "template_evolution.npz")
    assert evolution["epochs"].tolist() == [0, 1, 2]  # from the zero initialisation to the end
    assert not evolution["t1"][0].any() and evolution["t1"][-1].any()
    assert (models / "templates" / "template_evolution.png").stat().st_size > 0
    assert (models / "checkpoints" / "checkpoint_epoch=2.pt").is_file()

    output = root / "eval"
    assert list(output.glob("events.out.tfevents.*"))
    curves = json.loads((output / "training_curves.json").read_text())
    assert [r["epoch"] for r in curves] == [1, 2] and {"train_loss_md", "train_loss_cmr"} <= set(curves[0])
    assert (output / "training_curves.png").stat().st_size > 0
    assert {p.name for p in (output / "previews").glob("*.png")} == {
        f"epoch_000{e}_{kind}.png" for e in (1, 2) for kind in ("reconstruction", "templates")
    }
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    assert len(runs) == 1
    assert {"train_loss", "train_loss_md", "train_loss_cmr", "train_loss_cl"} <= set(runs[0].data.metrics)
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "previews")}
    assert "previews/epoch_0002_reconstruction.png" in artifacts


def test_killed_run_resumes_after_last_checkpoint(
    tmp_path, pretrain_cohort, repo_root, python_executable, subprocess_env
):
    root = tmp_path / "bundle"
    checkpoints = root / "models" / "checkpoints"
    first = _command(python_executable, repo_root, root, pretrain_cohort, "--epochs", "5", "--batch_size", "3")
    with open(tmp_path / "first.log", "w") as out:
        process = subprocess.Popen(first, env=subprocess_env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not (checkpoints / "checkpoint_epoch=1.pt").is_file():
                assert process.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no checkpoint after 240 s"
                time.sleep(0.1)
            process.send_signal(signal.SIGKILL)  # no chance to clean up: the worst case
        finally:
            process.wait(timeout=60)
    assert not (root / "models" / "model.pt").exists()
    done = max(int(p.stem.split("=")[1]) for p in checkpoints.glob("checkpoint_epoch=*.pt"))
    assert done in (1, 2)

    second = _command(python_executable, repo_root, root, pretrain_cohort, "--epochs", "3", "--batch_size", "3")
    log = _run(second, subprocess_env, tmp_path, tmp_path / "second.log")
    assert f"resumed from {checkpoints / f'checkpoint_epoch={done}.pt'}" in log
    assert "Epoch: 1/3" not in log and f"Epoch: {done + 1}/3" in log
    state = torch.load(checkpoints / "checkpoint_epoch=3.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 3 * state["trainer"]["epoch_length"]
    assert (root / "models" / "encoder.pt").is_file()


def test_torchrun_two_nodes_c10d_rendezvous_gloo(
    tmp_path, pretrain_cohort, repo_root, python_executable, subprocess_env
):
    """Two torchrun agents ("nodes", one process each) meet through c10d rendezvous and share one bundle_root."""
    with socket.socket() as s:  # a free port for the rendezvous store (the first agent to bind hosts it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [
        python_executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", uuid.uuid4().hex,
        "--rdzv_conf", "join_timeout=120", "--max_restarts", "0", "--local_addr", "127.0.0.1",
    ]  # fmt: skip
    root = tmp_path / "bundle"  # the same folder for both nodes: a shared file system
    configs = [*CONFIGS, "multi_gpu_train.json"]
    command = _command(
        python_executable, repo_root, root, pretrain_cohort, "--epochs", "1", configs=configs, launcher=launcher
    )
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    processes = []
    try:
        for log in logs:
            with open(log, "w") as out:
                processes.append(
                    subprocess.Popen(command, env=subprocess_env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
                )
        deadline = time.monotonic() + 300
        codes = [process.wait(timeout=max(1.0, deadline - time.monotonic())) for process in processes]
    finally:
        for process in processes:  # SIGTERM first: torchrun forwards it to its workers, SIGKILL would orphan them
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(text[-4000:] for text in texts)
    assert (root / "models" / "encoder.pt").is_file()
    assert list((root / "models" / "checkpoints").glob("checkpoint_epoch=*.pt")) == [
        root / "models" / "checkpoints" / "checkpoint_epoch=1.pt"
    ]
    text = "".join(texts)
    assert text.count("exported 8 modality templates") == 1  # rank 0 only, on one of the two nodes
    assert text.count("Epoch[1] Metrics") == 1
    # world size 2: the DistributedSampler gives each rank half the (padded) cases, so half the iterations
    cases = len(json.loads((pretrain_cohort / "datalist.json").read_text())["training"])
    batch_size = json.loads((repo_root / "bundles" / "brainmvp_pretrain" / "configs" / "quick.json").read_text())[
        "batch_size"
    ]
    state = torch.load(root / "models" / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["trainer"]["epoch_length"] == math.ceil(math.ceil(cases / 2) / batch_size)
    assert math.ceil(math.ceil(cases / 2) / batch_size) < math.ceil(cases / batch_size)  # world size 1 would differ


def test_evaluate_reports_reconstruction_ratio_and_template_fidelity(
    tmp_path, pretrain_cohort, repo_root, python_executable, subprocess_env
):
    """evaluate.json scores a trained run on the held-out split: the report the demo's summary reads."""
    root = tmp_path / "bundle"
    _run(_command(python_executable, repo_root, root, pretrain_cohort, "--epochs", "1"), subprocess_env, tmp_path,
         tmp_path / "train.log")  # fmt: skip
    evaluate = _command(python_executable, repo_root, root, pretrain_cohort, configs=[*CONFIGS, "evaluate.json"])
    _run(evaluate, subprocess_env, tmp_path, tmp_path / "evaluate.log")
    report = json.loads((root / "eval" / "metrics.json").read_text())
    assert report["reconstruction"]["crops"] > 0
    assert report["reconstruction_mse_ratio"] == pytest.approx(
        report["reconstruction"]["mse"] / report["reconstruction"]["mean_fill_mse"]
    )
    modalities = {m for case in json.loads((pretrain_cohort / "datalist.json").read_text())["training"]
                  for m in case["modalities"]}  # fmt: skip
    assert set(report["templates_r"]) == modalities
    scores = [r for r in report["templates_r"].values() if r is not None]  # None: a template never sampled
    assert scores and all(-1.0 <= r <= 1.0 for r in scores)
