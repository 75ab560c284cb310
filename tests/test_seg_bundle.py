"""The brainmvp_brats_seg bundle end to end: train (quick), evaluate, infer with missing modalities, properties."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brainmvp_brats_seg"
MODALITIES = ["t1", "t1c", "t2", "flair"]
# quick.json at 4 mm processing spacing keeps validation and inference a few seconds on a shared CPU
FAST = {"spacing": [4.0, 4.0, 4.0], "max_epochs": 1, "epoch_length": 2}
TINY_NET = {"network_def#encoder#_target_": "brainmvp_components.networks.uniformer_tiny"}

pytestmark = pytest.mark.slow


def _cli(overrides: dict) -> list[str]:
    return [arg for k, v in overrides.items() for arg in (f"--{k}", json.dumps(v) if not isinstance(v, str) else v)]


def _run(bundle: Path, configs: list[str], env, python, overrides: dict, timeout: int = 600):
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", json.dumps(files)]
    cmd += ["--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle)]
    cmd += _cli(overrides)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-20000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, brats_cohort, subprocess_env, python_executable):
    """One quick training run: tiny UniUNet, pre-trained encoder and templates in the pre-training formats."""
    from brainmvp_components.data.atlas import atlas_grid
    from brainmvp_components.networks.templates import ModalityTemplates
    from brainmvp_components.networks.uniformer import uniformer_tiny

    root = tmp_path_factory.mktemp("seg")
    bundle = root / "brainmvp_brats_seg"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    data = root / "data"
    shutil.copytree(brats_cohort, data, ignore=shutil.ignore_patterns("datalist.json", ".*"))
    pretrain = root / "pretrain"
    torch.manual_seed(0)
    (pretrain / "templates").mkdir(parents=True)
    torch.save(uniformer_tiny(in_channels=1).state_dict(), pretrain / "encoder.pt")
    shape, affine = atlas_grid(4.0)
    templates = ModalityTemplates(MODALITIES, spatial_shape=shape, affine=affine)
    with torch.no_grad():
        templates.weight.uniform_(0, 1)
    templates.export_nifti(pretrain / "templates", montage=False)
    overrides = {
        "dataset_dir": str(data),
        "pretrained_encoder": str(pretrain / "encoder.pt"),
        "templates_dir": str(pretrain / "templates"),
        **FAST,
    }
    result = _run(bundle, ["train.json", "quick.json"], subprocess_env, python_executable, overrides)
    return {"bundle": bundle, "data": data, "overrides": overrides, "log": result.stdout + result.stderr}


def test_train_outputs(trained):
    bundle = trained["bundle"]
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("encoder.") for k in state) and any(k.startswith("ms_out.") for k in state)
    assert sorted(p.name for p in (bundle / "models" / "templates").glob("template_*.nii.gz")) == sorted(
        f"template_{m}.nii.gz" for m in MODALITIES
    )
    assert list((bundle / "models" / "checkpoints").glob("checkpoint_epoch=*.pt"))
    # the pre-trained encoder was loaded: every tensor but the single-channel input stem, which a 4-channel net
    # re-initialises; the run does not fall back to training from scratch
    encoder_file = Path(trained["overrides"]["pretrained_encoder"])
    encoder_keys = torch.load(encoder_file, weights_only=True).keys()
    loaded = re.findall(rf"{re.escape(str(encoder_file))} \([^)]*\): loaded (\d+) tensors", trained["log"])
    assert loaded == [str(sum(not k.startswith("patch_embed1.proj.") for k in encoder_keys))], loaded
    assert "from scratch" not in trained["log"] and "val_mean_dice" in trained["log"]
    assert list((bundle / "eval").glob("events.out.tfevents*"))


def test_evaluate(trained, subprocess_env, python_executable):
    bundle = trained["bundle"]
    _run(bundle, ["train.json", "quick.json", "evaluate.json"], subprocess_env, python_executable, trained["overrides"])
    with open(bundle / "eval" / "metrics_per_case.csv") as f:
        header, *rows = f.read().strip().splitlines()
    assert header.split(",")[1:] == ["Dice_TC", "Dice_WT", "Dice_ET", "HD95_TC", "HD95_WT", "HD95_ET"]
    assert len(rows) == 1  # the test split of six subjects
    summary = json.loads((bundle / "eval" / "metrics_summary.json").read_text())
    assert {"mean", "std", "median"} <= set(summary["metrics"]["Dice_WT"])
    case = rows[0].split(",")[0]
    pred = nib.load(bundle / "eval" / "predictions" / f"{case}_seg.nii.gz")
    ref = nib.load(next((trained["data"] / case).glob("*_seg.nii.gz")))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine, atol=1e-4)


def _oblique_copy(src_files: list[Path], out_dir: Path) -> list[str]:
    """The case resampled onto a rotated grid of 1.5 mm voxels (an oblique, non-1 mm acquisition)."""
    from monai.data import MetaTensor
    from monai.transforms import LoadImage, SpatialResample

    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    out_dir.mkdir(parents=True)
    paths = []
    for f in src_files:
        img = LoadImage(image_only=True, ensure_channel_first=True)(str(f))
        centre = np.asarray(img.affine)[:3, :3] @ (np.array(img.shape[1:]) / 2) + np.asarray(img.affine)[:3, 3]
        affine = np.eye(4)
        affine[:3, :3] = rotation * 1.5
        shape = (90, 100, 70)
        affine[:3, 3] = centre - affine[:3, :3] @ (np.array(shape) / 2)
        out = SpatialResample(mode="bilinear")(img, dst_affine=torch.as_tensor(affine), spatial_size=shape)
        path = out_dir / Path(f).name
        nib.save(nib.Nifti1Image(MetaTensor(out).numpy()[0].astype(np.float32), affine), str(path))
        paths.append(str(path))
    return paths


def test_inference_inputs_missing_modalities_and_geometry(trained, tmp_path):
    from monai.bundle import ConfigWorkflow

    data = trained["data"]
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    files = {
        c.name: {m: next(c.glob(f"*_{t}.nii.gz")) for m, t in zip(MODALITIES, ["t1", "t1ce", "t2", "flair"])}
        for c in cases
    }
    names = [c.name for c in cases]
    four_d = tmp_path / "multi.nii.gz"
    stack = [nib.load(files[names[1]][m]) for m in MODALITIES]
    nib.save(
        nib.Nifti1Image(np.stack([i.get_fdata(dtype=np.float32) for i in stack], -1), stack[0].affine), str(four_d)
    )
    oblique = _oblique_copy([files[names[4]][m] for m in MODALITIES], tmp_path / "oblique")
    entries = [
        {"case": "per_modality", "image": [str(files[names[0]][m]) for m in MODALITIES], "modalities": MODALITIES},
        {"case": "four_d", "image": str(four_d), "modalities": MODALITIES},
        {
            "case": "missing_one",
            "image": [str(files[names[2]][m]) for m in ("t1", "t1c", "flair")],
            "modalities": ["t1", "t1ce", "flair"],
        },
        {"case": "missing_three", "image": [str(files[names[3]]["flair"])], "modalities": ["flair"]},
        {"case": "oblique", "image": oblique, "modalities": MODALITIES},
    ]
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps(entries))
    out_dir = tmp_path / "pred"
    bundle = trained["bundle"]
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(bundle),
        datalist=str(datalist),
        output_dir=str(out_dir),
        save_overlay=True,
        spacing=[4.0, 4.0, 4.0],
        roi_size=[32, 32, 32],
        **TINY_NET,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    sources = {e["case"]: e["image"] if isinstance(e["image"], str) else e["image"][0] for e in entries}
    assert sorted(p.name for p in out_dir.glob("*_seg.nii.gz")) == sorted(f"{case}_seg.nii.gz" for case in sources)
    for case, source in sources.items():
        # outputs are named after the case, never after an image file
        src = nib.load(source)
        pred = nib.load(out_dir / f"{case}_seg.nii.gz")
        assert pred.shape == src.shape[:3], case
        assert np.allclose(pred.affine, src.affine, atol=1e-4), case
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert list(out_dir.glob("*_overlay_flair.png"))
    # the saved predictions' sidecar records say which modalities were imputed with templates
    expected = {
        "per_modality": [],
        "four_d": [],
        "missing_one": ["t2"],
        "missing_three": ["t1", "t1c", "t2"],
        "oblique": [],
    }
    for case, imputed in expected.items():
        record = json.loads((out_dir / f"{case}_seg.json").read_text())
        placement = record.pop("template_registration")
        assert record == {
            "case": case,
            "modalities_used": [m for m in MODALITIES if m not in imputed],
            "imputed_modalities": imputed,
            "missing_modalities": imputed,
            "imputed_files": {},
        }, case
        # cohort cases lie in the templates' atlas frame: no registration needed
        assert placement is None if not imputed else placement["method"] == "atlas_frame", case


def _four_d_case(case_dir: Path, out: Path) -> dict:
    """MONAI Label's item for a case: one 4-D file, channels in the bundle's input order, and the label."""
    volumes = [nib.load(next(case_dir.glob(f"*_{token}.nii.gz"))) for token in ("t1", "t1ce", "t2", "flair")]
    stack = np.stack([v.get_fdata(dtype=np.float32) for v in volumes], -1)
    nib.save(nib.Nifti1Image(stack, volumes[0].affine), str(out))
    return {"image": str(out), "label": str(next(case_dir.glob("*_seg.nii.gz")))}


def test_monai_label_style_training_data(trained, tmp_path, subprocess_env, python_executable):
    """MONAI Label overrides the datasets' data with 4-D images and labels, without modality names."""
    cases = sorted(p for p in trained["data"].iterdir() if p.is_dir())[:2]
    items = [_four_d_case(c, tmp_path / f"{c.name}.nii.gz") for c in cases]
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"] / "configs", bundle / "configs")
    overrides = {
        **trained["overrides"],
        "dataset_dir": str(tmp_path / "unused"),
        "epoch_length": 1,
        "train#dataset#data": items,
        "validate#dataset#data": items[1:],
    }
    _run(bundle, ["train.json", "quick.json"], subprocess_env, python_executable, overrides)
    assert (bundle / "models" / "model.pt").is_file()
    assert not (tmp_path / "unused").exists()  # the overridden data needs no datalist


def test_torchrun_two_processes_gloo(trained, tmp_path, subprocess_env, python_executable):
    """multi_gpu_train.json on CPU (gloo): DDP training, validation on both ranks, outputs from rank 0 only."""
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"] / "configs", bundle / "configs")
    files = [str(bundle / "configs" / c) for c in ("train.json", "multi_gpu_train.json", "quick.json")]
    cmd = [python_executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", json.dumps(files), "--bundle_root", str(bundle)]
    cmd += _cli({**trained["overrides"], "epoch_length": 1})
    result = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-20000:]
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # the plain network, loadable without DDP
    assert (bundle / "models" / "checkpoints" / "checkpoint_epoch=1.pt").is_file()
    assert log.count("Key metric: val_mean_dice") == 1  # validation is logged by rank 0 only


def test_properties_and_network_tools(trained, tmp_path):
    from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out

    configs = BUNDLE / "configs"
    train = ConfigWorkflow(
        config_file=[str(configs / "train.json"), str(configs / "quick.json")],
        meta_file=str(configs / "metadata.json"),
        workflow_type="train",
        bundle_root=str(tmp_path),
        dataset_dir=str(trained["data"]),
    )
    train.initialize()
    assert train.check_properties() == []
    overrides = {"network_def#encoder#_target_": TINY_NET["network_def#encoder#_target_"], "device": "cpu"}
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        n=2,
        **overrides,
    )
    from brainmvp_components.networks.uniunet import brainmvp_uniunet

    torch.save(brainmvp_uniunet("tiny").state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        **overrides,
    )
    assert (tmp_path / "model.ts").is_file()
