"""Inference on bad and unusual inputs: every row of the robustness table, through the bundles' inference.json.

A tiny segmentation network with random weights stands in for a trained model (the behaviour under test does
not depend on its predictions); the templates are the mean of cohort subjects, so that registration has anatomy
to align.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_data import MODALITIES, copy_case, edit_volume, file_of, files_of, mean_templates, moved_copy

REPO = Path(__file__).resolve().parents[1]
SEG = REPO / "bundles" / "brainmvp_brats_seg"
CLS = REPO / "bundles" / "brainmvp_adni_cls"
SEG_OVERRIDES = {
    "network_def#encoder#_target_": "brainmvp_components.networks.uniformer_tiny",
    "spacing": [4.0, 4.0, 4.0],
    "roi_size": [32, 32, 32],
    "sw_overlap": 0.0,
    "device": "cpu",
}

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory, brats_cohort):
    """The segmentation bundle's configs with a random tiny model and cohort-mean templates."""
    from brainmvp_components.networks.uniunet import brainmvp_uniunet

    root = tmp_path_factory.mktemp("robust_seg")
    bundle = root / "brainmvp_brats_seg"
    shutil.copytree(SEG / "configs", bundle / "configs")
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(brainmvp_uniunet("tiny").state_dict(), bundle / "models" / "model.pt")
    cases = sorted(p for p in brats_cohort.iterdir() if p.is_dir())
    mean_templates(cases[1:]).export_nifti(bundle / "models" / "templates", montage=False)
    return {"bundle": bundle, "cases": cases}


@pytest.fixture(scope="module")
def bad_batch(seg_bundle, tmp_path_factory):
    """A folder of cases: two good ones (one of them moved off the atlas frame and missing t2) and one of each
    kind of bad input."""
    cases = seg_bundle["cases"]
    data = tmp_path_factory.mktemp("bad_batch")
    copy_case(cases[1], data, "good")
    moved = moved_copy(cases[0], data / "moved")
    nan = copy_case(cases[2], data, "nan_voxels")
    edit_volume(file_of(nan, "t2"), lambda d: np.where(np.arange(d.size).reshape(d.shape) % 997 == 0, np.nan, d)[...])
    nan_count = int(np.isnan(nib.load(file_of(nan, "t2")).get_fdata()).sum())
    whole_nan = copy_case(cases[2], data, "nan_modality")
    edit_volume(file_of(whole_nan, "flair"), lambda d: np.full_like(d, np.nan))
    zero = copy_case(cases[3], data, "zero_modality")
    edit_volume(file_of(zero, "flair"), np.zeros_like)
    four_d = copy_case(cases[4], data, "four_d")
    t1_path = file_of(four_d, "t1")
    volumes = [nib.load(file_of(four_d, m)).get_fdata(dtype=np.float32) for m in ("t1", "t1c", "t2")]
    nib.save(nib.Nifti1Image(np.stack(volumes, -1), nib.load(t1_path).affine), t1_path)
    truncated = copy_case(cases[5], data, "truncated")
    path = file_of(truncated, "t1")
    path.write_bytes(path.read_bytes()[:400])
    return {"data": data, "moved": moved, "nan_count": nan_count}


def _cli(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


def _run_cli(bundle: Path, env, python, overrides: dict, config: str = "inference.json"):
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / config)]
    cmd += ["--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle)]
    cmd += _cli(overrides)
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


def _workflow(bundle: Path, **overrides):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(bundle),
        **overrides,
    )
    workflow.initialize()
    return workflow


# ------------------------------------------------------------------------------------------------ tests


def test_mixed_batch_through_monai_bundle_run(seg_bundle, bad_batch, tmp_path, subprocess_env, python_executable):
    """Rows 1, 2, 4, 5, 6: good cases written, every bad one reported with its file, non-zero exit, a one-line
    summary as the last line; the moved case's missing t2 is imputed by registered templates."""
    out = tmp_path / "pred"
    overrides = {**SEG_OVERRIDES, "dataset_dir": str(bad_batch["data"]), "output_dir": str(out), "save_imputed": True}
    result = _run_cli(seg_bundle["bundle"], subprocess_env, python_executable, overrides)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1, result.stdout[-5000:]
    failed = "four_d, nan_modality, nan_voxels, truncated, zero_modality"
    report = out / "failures.csv"
    assert lines[-1] == f"5 of 7 case(s) failed ({failed}); the other 2 were written; failures are listed in {report}"
    assert "Traceback" not in result.stdout and "ConfigExpression" not in result.stdout

    # the good cases are written, named after their case folders
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == ["good_seg.nii.gz", "moved_seg.nii.gz"]
    moved_t1 = nib.load(file_of(bad_batch["moved"], "t1"))
    pred = nib.load(out / "moved_seg.nii.gz")
    assert pred.shape == moved_t1.shape and np.allclose(pred.affine, moved_t1.affine, atol=1e-4)

    # the failures report: case, file, reason
    report = json.loads((out / "failures.json").read_text())
    assert report["failed_cases"] == ["four_d", "nan_modality", "nan_voxels", "truncated", "zero_modality"]
    assert report["num_done"] == 2
    by_case = {r["case"]: r for r in report["failures"]}
    data = bad_batch["data"]
    assert by_case["nan_voxels"]["file"] == str(file_of(data / "nan_voxels", "t2"))
    assert by_case["nan_voxels"]["reason"].startswith(f"{bad_batch['nan_count']} non-finite (NaN or infinite) voxel(s)")
    assert by_case["nan_modality"]["file"] == str(file_of(data / "nan_modality", "flair"))
    assert "every voxel" in by_case["nan_modality"]["reason"]
    assert by_case["zero_modality"]["reason"] == "constant image (every voxel is 0.0)"
    assert by_case["four_d"]["file"] == str(file_of(data / "four_d", "t1"))
    assert "4-D file with 3 volumes" in by_case["four_d"]["reason"]
    assert by_case["truncated"]["reason"].startswith("unreadable or corrupt")
    csv_lines = (out / "failures.csv").read_text().splitlines()
    assert csv_lines[0] == "case,file,reason,stage" and len(csv_lines) == 6
    # every failure is one log line
    assert sum("failed: case 'four_d'" in line for line in lines) == 1

    # the moved case's t2 came from templates registered to it and covers its head
    record = json.loads((out / "moved_seg.json").read_text())
    assert record["imputed_modalities"] == ["t2"] and record["modalities_used"] == ["t1", "t1c", "flair"]
    registration = record["template_registration"]
    assert registration["method"] == "affine_mutual_information" and registration["fixed_modality"] == "t1"
    assert np.asarray(registration["transform_case_to_template_ras"]).shape == (4, 4)
    assert registration["quality"]["coverage"] >= 0.9
    assert record["imputed_files"] == {"t2": "moved_imputed_t2.nii.gz"}
    # the imputed channel is written as the model saw it (the bundle's spacing, RAS, cropped to the head's bounding
    # box) and lies within the case's field of view, to within one voxel of the model's grid
    imputed = nib.load(out / "moved_imputed_t2.nii.gz")
    assert nib.aff2axcodes(imputed.affine) == ("R", "A", "S")

    def world_box(image):
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in image.shape[:3]], indexing="ij")).reshape(3, -1)
        world = (image.affine @ np.vstack([corners, np.ones(corners.shape[1])]))[:3]
        return world.min(axis=1), world.max(axis=1), np.linalg.norm(image.affine[:3, :3], axis=0)

    low, high, spacing = world_box(imputed)
    case_low, case_high, _ = world_box(moved_t1)
    assert np.all(low >= case_low - spacing) and np.all(high <= case_high + spacing)
    assert np.all(high - low >= 0.5 * (case_high - case_low))  # the head, not a sliver of it
    good = json.loads((out / "good_seg.json").read_text())
    assert good["template_registration"] is None and good["imputed_files"] == {}


def test_single_case_failure_last_line(seg_bundle, bad_batch, tmp_path, subprocess_env, python_executable):
    """A single-case run that fails ends with one line naming the case, the file and the problem."""
    nan_dir = bad_batch["data"] / "nan_voxels"
    datalist = tmp_path / "one.json"
    files = files_of(nan_dir)
    datalist.write_text(json.dumps([{"id": "patient_x", "image": [str(files[m]) for m in MODALITIES]}]))
    overrides = {**SEG_OVERRIDES, "datalist": str(datalist), "output_dir": str(tmp_path / "pred")}
    result = _run_cli(seg_bundle["bundle"], subprocess_env, python_executable, overrides)
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert last == (
        f"case 'patient_x', file {files['t2']}: {bad_batch['nan_count']} non-finite (NaN or infinite) voxel(s), "
        f"of {int(np.prod(nib.load(files['t2']).shape))} voxels"
    )
    assert (tmp_path / "pred" / "failures.csv").is_file()


def test_outputs_named_by_case_and_collisions(seg_bundle, tmp_path):
    """Row 3: `patient1/t1.nii.gz`, `patient2/t1.nii.gz` give two outputs named by folder; cases that would write
    one output stop the run before anything is written."""
    from brainmvp_components.inference.batch import InferenceError

    cases = seg_bundle["cases"]
    data = tmp_path / "data"
    for name, source in (("patient1", cases[1]), ("patient2", cases[2])):
        (data / name).mkdir(parents=True)
        for modality, path in files_of(source).items():
            shutil.copy(path, data / name / f"{modality}.nii.gz")
    out = tmp_path / "pred"
    _workflow(seg_bundle["bundle"], dataset_dir=str(data), output_dir=str(out), **SEG_OVERRIDES).run()
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == ["patient1_seg.nii.gz", "patient2_seg.nii.gz"]
    assert json.loads((out / "patient2_seg.json").read_text())["case"] == "patient2"

    # datalist entries without names whose files share a name in different folders are named by the folders
    listing = tmp_path / "list.json"
    listing.write_text(
        json.dumps([{"image": [str(data / p / f"{m}.nii.gz") for m in MODALITIES]} for p in ("patient1", "patient2")])
    )
    out2 = tmp_path / "pred2"
    _workflow(seg_bundle["bundle"], datalist=str(listing), output_dir=str(out2), **SEG_OVERRIDES).run()
    assert sorted(p.name for p in out2.glob("*_seg.nii.gz")) == ["patient1_seg.nii.gz", "patient2_seg.nii.gz"]

    # two 4-D files of one name: one output name for two cases is an error before anything runs
    for folder in ("site_a", "site_b"):
        (tmp_path / folder).mkdir()
        stack = np.stack(
            [nib.load(data / "patient1" / f"{m}.nii.gz").get_fdata(dtype=np.float32) for m in MODALITIES], -1
        )
        nib.save(
            nib.Nifti1Image(stack, nib.load(data / "patient1" / "t1.nii.gz").affine), tmp_path / folder / "scan.nii.gz"
        )
    listing.write_text(json.dumps([{"image": str(tmp_path / f / "scan.nii.gz")} for f in ("site_a", "site_b")]))
    out3 = tmp_path / "pred3"
    with pytest.raises(
        InferenceError, match=r"inference not started: 1 output name\(s\) claimed by more than one case.*site_a.*site_b"
    ) as raised:
        _workflow(seg_bundle["bundle"], datalist=str(listing), output_dir=str(out3), **SEG_OVERRIDES).run()
    assert raised.value.code == str(raised.value) and "\n" not in str(raised.value)
    assert not out3.exists()


def test_existing_outputs_are_skipped_or_replaced(seg_bundle, tmp_path, capsys):
    """Row 7: a second run skips finished cases (a resumed batch); overwrite replaces them; an interrupted case
    (prediction without its sidecar) is run again."""
    cases = seg_bundle["cases"]
    data = tmp_path / "data"
    for name, source in (("a", cases[1]), ("b", cases[2])):
        copy_case(source, data, name)
    out = tmp_path / "pred"
    settings = {"dataset_dir": str(data), "output_dir": str(out), **SEG_OVERRIDES}
    _workflow(seg_bundle["bundle"], **settings).run()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.*")}
    assert sorted(stamps) == ["a_seg.json", "a_seg.nii.gz", "b_seg.json", "b_seg.nii.gz"]

    (out / "b_seg.json").unlink()  # b was interrupted between its prediction and its sidecar
    capsys.readouterr()
    workflow = _workflow(seg_bundle["bundle"], **settings)
    workflow.run()
    assert "1 case(s) already have outputs" in capsys.readouterr().out and workflow.evaluator.plan.skipped == ["a"]
    assert (out / "a_seg.nii.gz").stat().st_mtime_ns == stamps["a_seg.nii.gz"]
    assert (out / "b_seg.json").is_file() and workflow.evaluator.completed_cases == ["b"]

    workflow = _workflow(seg_bundle["bundle"], overwrite=True, **settings)
    workflow.run()
    assert workflow.evaluator.plan.skipped == [] and sorted(workflow.evaluator.completed_cases) == ["a", "b"]
    assert (out / "a_seg.nii.gz").stat().st_mtime_ns != stamps["a_seg.nii.gz"]
    assert not (out / "failures.csv").exists()


def test_bad_entries_and_failures_report_from_a_datalist(seg_bundle, bad_batch, tmp_path):
    """A missing file and a wrong channel count are reported per case; the good case is still written; a second
    run without failures removes the stale report."""
    from brainmvp_components.inference.batch import InferenceFailed

    good = files_of(bad_batch["data"] / "good")
    four_d = tmp_path / "three_channels.nii.gz"
    volumes = [nib.load(good[m]).get_fdata(dtype=np.float32) for m in ("t1", "t1c", "t2")]
    nib.save(nib.Nifti1Image(np.stack(volumes, -1), nib.load(good["t1"]).affine), four_d)
    listing = tmp_path / "list.json"
    entries = [
        {"case": "ok", "image": [str(good[m]) for m in MODALITIES], "modalities": MODALITIES},
        {"case": "gone", "image": [str(tmp_path / "absent_t1.nii.gz")], "modalities": ["t1"]},
        {"case": "channels", "image": str(four_d)},
    ]
    listing.write_text(json.dumps(entries))
    out = tmp_path / "pred"
    with pytest.raises(InferenceFailed) as raised:
        _workflow(seg_bundle["bundle"], datalist=str(listing), output_dir=str(out), **SEG_OVERRIDES).run()
    by_case = {r["case"]: r for r in raised.value.failures}
    assert sorted(by_case) == ["channels", "gone"]
    assert by_case["gone"]["stage"] == "entry" and "absent_t1.nii.gz" in by_case["gone"]["reason"]
    assert by_case["gone"]["file"] == str(tmp_path / "absent_t1.nii.gz")
    assert by_case["channels"]["file"] == str(four_d)
    assert (
        "holds 3 volume(s)" in by_case["channels"]["reason"]
        and "4 modalities are named" in by_case["channels"]["reason"]
    )
    assert raised.value.report == out / "failures.csv" and (out / "ok_seg.nii.gz").is_file()

    listing.write_text(json.dumps(entries[:1]))
    _workflow(seg_bundle["bundle"], datalist=str(listing), output_dir=str(out), **SEG_OVERRIDES).run()
    assert not (out / "failures.csv").exists() and not (out / "failures.json").exists()


def test_case_name_formatter_uses_the_case_id():
    """Evaluation and inference name saved predictions after the case, not after a modality file."""
    from brainmvp_components.metrics.segmentation import case_name_formatter

    assert (
        case_name_formatter({"case_id": "patient1", "filename_or_obj": "/d/patient1/t1.nii.gz"})["subject"]
        == "patient1"
    )
    assert case_name_formatter({"case_id": ["patient2"], "filename_or_obj": "/d/x/t1.nii.gz"})["subject"] == "patient2"
    assert case_name_formatter({"filename_or_obj": "/d/patient3/t1.nii.gz"})["subject"] == "patient3"
    assert case_name_formatter({"filename_or_obj": "/d/BraTS_7_t1ce.nii.gz"})["subject"] == "BraTS_7"


# ------------------------------------------------------------------------------------------------ classification


@pytest.fixture(scope="module")
def cls_bundle(tmp_path_factory):
    from brainmvp_components.networks.classifier import BrainMVPClassifier
    from brainmvp_components.networks.uniformer import uniformer_tiny

    bundle = tmp_path_factory.mktemp("robust_cls") / "brainmvp_adni_cls"
    shutil.copytree(CLS / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(
        BrainMVPClassifier(uniformer_tiny(in_channels=1), num_classes=2).state_dict(), bundle / "models" / "model.pt"
    )
    return bundle


def test_classification_settings_warning_failures_and_resume(cls_bundle, adni_cohort, tmp_path, capsys):
    """Row 8: a roi_size other than the training one is warned about (the training config stores its settings
    beside the model); a bad case is reported while the others are predicted; a rerun keeps earlier predictions."""
    from monai.bundle import ConfigParser

    from brainmvp_components.inference.batch import InferenceFailed

    # the training config's initialize step stores the settings beside the model
    parser = ConfigParser()
    parser.read_config(str(cls_bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(cls_bundle)
    parser["roi_size"] = [48, 48, 48]
    parser["spacing"] = [4.0, 4.0, 4.0]
    step = next(i for i, s in enumerate(parser["initialize"]) if "save_training_settings" in s)
    parser.get_parsed_content(f"initialize#{step}")
    settings = json.loads((cls_bundle / "models" / "training_settings.json").read_text())
    assert settings == {
        "roi_size": [48, 48, 48],
        "resize_to_roi": False,
        "spacing": [4.0, 4.0, 4.0],
        "input_modalities": ["t1"],
    }

    data = tmp_path / "data"
    cases = sorted(p for p in adni_cohort.iterdir() if p.is_dir())[:3]
    for case in cases:
        shutil.copytree(case, data / case.name)
    bad = next((data / cases[0].name).glob("*_t1.nii.gz"))
    edit_volume(bad, lambda d: np.full_like(d, np.nan))
    out = tmp_path / "out"
    overrides = {
        "network_def#encoder#_target_": "brainmvp_components.networks.uniformer_tiny",
        "dataset_dir": str(data),
        "output_dir": str(out),
        "spacing": [4.0, 4.0, 4.0],
        "roi_size": [32, 32, 32],
        "num_workers": 0,
        "device": "cpu",
    }
    capsys.readouterr()
    with pytest.raises(InferenceFailed, match=r"1 of 3 case\(s\) failed"):
        _workflow(cls_bundle, **overrides).run()
    log = capsys.readouterr().out
    assert "WARNING - roi_size [32, 32, 32] differs from the [48, 48, 48] the model was trained with" in log
    predicted = [c["case"] for c in json.loads((out / "predictions.json").read_text())["cases"]]
    assert predicted == [c.name for c in cases[1:]]

    # the bad case fixed: a rerun predicts only it and keeps the others
    shutil.copy(next(cases[0].glob("*_t1.nii.gz")), bad)
    workflow = _workflow(cls_bundle, **{**overrides, "roi_size": [48, 48, 48]})
    workflow.run()
    assert "differs from" not in capsys.readouterr().out
    assert workflow.evaluator.completed_cases == [cases[0].name]
    predicted = [c["case"] for c in json.loads((out / "predictions.json").read_text())["cases"]]
    assert sorted(predicted) == sorted(c.name for c in cases)


def test_run_level_errors_are_one_line(seg_bundle, bad_batch, tmp_path):
    """Problems of the run, not of a case, end it with one line, not a chain of configuration errors."""
    from brainmvp_components.inference.batch import InferenceError

    with pytest.raises(InferenceError, match=r"^inference not started: datalist .*absent.json does not exist$"):
        _workflow(seg_bundle["bundle"], datalist=str(tmp_path / "absent.json"), **SEG_OVERRIDES).run()
    listing = tmp_path / "list.json"
    good = files_of(bad_batch["data"] / "good")
    listing.write_text(json.dumps([{"case": "ok", "image": [str(good[m]) for m in MODALITIES]}]))
    with pytest.raises(InferenceError, match=r"^inference stopped: FileNotFoundError: .*no_model.pt") as raised:
        overrides = {"datalist": str(listing), "output_dir": str(tmp_path / "pred"), **SEG_OVERRIDES}
        _workflow(seg_bundle["bundle"], ckpt_path=str(tmp_path / "no_model.pt"), **overrides).run()
    assert "\n" not in str(raised.value)
