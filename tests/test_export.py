"""ONNX export of the segmentation network with ``monai.bundle onnx_export``, and inference through ONNX Runtime.

The network is quick.json's tiny UniUNet on 32^3 windows; its weights are random, with the output biases set so that
each region covers part of a window (labels then test something). Speed is measured by
``scripts/benchmark_export.py``, not here.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, onnx_export

from brainmvp_components.inference.batch import InferenceError
from brainmvp_components.inference.onnx_network import (
    EXPORT_OPTIONS,
    OnnxModelError,
    OnnxNetwork,
    onnx_export_command,
)
from brainmvp_components.metrics.segmentation import brats_region_metrics, label_map_to_regions
from brainmvp_components.networks.uniunet import UniUNet, brainmvp_uniunet

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brainmvp_brats_seg"
MODALITIES = ["t1", "t1c", "t2", "flair"]
WINDOW = [1, 4, 32, 32, 32]
DYNAMIC_AXES = {"image": {0: "batch", 2: "h", 3: "w", 4: "d"}, "pred": {0: "batch", 2: "h", 3: "w", 4: "d"}}


def _tiny_network() -> UniUNet:
    """quick.json's network with seeded weights; output biases centre each region's logits on a random window."""
    torch.manual_seed(0)
    network = brainmvp_uniunet("tiny").eval()
    with torch.no_grad():
        logits = network(torch.rand(WINDOW, generator=torch.Generator().manual_seed(1)))
        network.decoder.out.conv.conv.bias -= logits.flatten(2).median(dim=2).values[0]
    return network


def _export(bundle: Path, filename: str, **converter_kwargs) -> Path:
    """``monai.bundle onnx_export`` in this process (the function the command line calls), with the bundle's options."""
    configs = bundle / "configs"
    path = bundle / "models" / filename
    onnx_export(
        net_id="network_def",
        filepath=str(path),
        ckpt_file=str(bundle / "models" / "model.pt"),
        config_file=[str(configs / "inference.json"), str(configs / "quick.json")],
        input_shape=WINDOW,
        use_trace=EXPORT_OPTIONS["use_trace"],
        converter_kwargs={**EXPORT_OPTIONS["converter_kwargs"], **converter_kwargs},
    )
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, subprocess_env, python_executable) -> Path:
    """A copy of the bundle's configs with ``models/model.pt`` (the tiny network) and ``models/model.onnx``, exported
    by the command that the bundle's error message and README give, run from the bundle's folder."""
    root = tmp_path_factory.mktemp("export") / "brainmvp_brats_seg"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    (root / "models").mkdir()
    torch.save(_tiny_network().state_dict(), root / "models" / "model.pt")
    command = onnx_export_command(
        "models/model.onnx", "models/model.pt", ["configs/inference.json", "configs/quick.json"], WINDOW
    )
    assert command.startswith("python ")
    temp = tmp_path_factory.mktemp("export_tmp")
    env = {**subprocess_env, "TMPDIR": str(temp)}
    command = shlex.quote(python_executable) + command[len("python") :]
    result = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert sorted(p.name for p in (root / "models").iterdir()) == ["model.onnx", "model.pt"]
    assert not [p.name for p in temp.iterdir() if p.is_file()]  # no weights left beside the exporter's temporary file
    return root


def _eager_and_onnx(path: Path, x: torch.Tensor, **runtime) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        eager = _tiny_network()(x)
    return eager, OnnxNetwork(path, intra_op_num_threads=1, **runtime)(x)


def _assert_close_labels(eager: torch.Tensor, onnx: torch.Tensor, atol: float = 1e-4, agreement: float = 0.999) -> None:
    assert onnx.shape == eager.shape and onnx.dtype == torch.float32
    assert (onnx - eager).abs().max() < atol
    agree = ((torch.sigmoid(onnx) > 0.5) == (torch.sigmoid(eager) > 0.5)).float().mean()
    assert agree > agreement
    positive = (torch.sigmoid(eager) > 0.5).float().mean()
    assert 0.05 < positive < 0.95  # the labels are not all one value


def test_exported_model_matches_eager(bundle):
    path = bundle / "models" / "model.onnx"
    network = OnnxNetwork(path, intra_op_num_threads=1)
    assert network.input_shape == WINDOW  # exported as the bundle command gives it: a fixed window
    x = torch.rand(3, *WINDOW[1:], generator=torch.Generator().manual_seed(2))
    _assert_close_labels(*_eager_and_onnx(path, x))  # a batch of three is run in chunks of one


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is in requirements-dev.txt")
def test_openvino_runtime_matches_eager(bundle):
    path = bundle / "models" / "model.onnx"
    x = torch.rand(2, *WINDOW[1:], generator=torch.Generator().manual_seed(4))
    network = OnnxNetwork(path, intra_op_num_threads=1, runtime="openvino", precision="f32")
    assert network.input_shape == WINDOW and "precision=f32" in repr(network)
    _assert_close_labels(*_eager_and_onnx(path, x, runtime="openvino", precision="f32"), atol=1e-3)
    # bfloat16 where the CPU has it: the decisions, not the logits, are what must hold
    _assert_close_labels(*_eager_and_onnx(path, x, runtime="openvino", precision="bf16"), atol=1.0, agreement=0.99)


def test_runtime_settings_are_checked(bundle):
    path = bundle / "models" / "model.onnx"
    with pytest.raises(ValueError, match="runtime must be one of"):
        OnnxNetwork(path, runtime="tensorrt")
    with pytest.raises(ValueError, match="precision is an OpenVINO setting"):
        OnnxNetwork(path, precision="bf16")


def test_dynamic_axes_export(bundle):
    names = {"input_names": ["image"], "output_names": ["pred"]}
    path = _export(bundle, "model_dynamic.onnx", dynamic_axes=DYNAMIC_AXES, **names)
    network = OnnxNetwork(path, intra_op_num_threads=1)
    assert network.input_name == "image" and network.input_shape == [None, 4, None, None, None]
    x = torch.rand(2, 4, 48, 32, 64, generator=torch.Generator().manual_seed(3))
    _assert_close_labels(*_eager_and_onnx(path, x))


def test_window_of_other_size_is_a_clear_error(bundle):
    path = bundle / "models" / "model.onnx"
    retake = r"model\.onnx takes \['B', 4, 32, 32, 32\].*--input_shape \[1, 4, 48, 48, 48\]"
    with pytest.raises(ValueError, match=retake):
        OnnxNetwork(path)(torch.rand(1, 4, 48, 48, 48))
    with pytest.raises(ValueError, match=r"takes \['B', 4, 32, 32, 32\], got \[1, 3, 32, 32, 32\]$"):
        OnnxNetwork(path)(torch.rand(1, 3, 32, 32, 32))
    with pytest.raises(
        OnnxModelError, match=r"takes \['B', 4, 32, 32, 32\], the run gives windows of \[4, 96, 96, 96\]"
    ):
        OnnxNetwork(path, window=[4, 96, 96, 96])


def _onnx_config(bundle_root: Path, **overrides) -> ConfigParser:
    configs = BUNDLE / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / c) for c in ("inference.json", "quick.json", "inference_onnx.json")])
    parser["bundle_root"] = str(bundle_root)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_missing_onnx_file_names_the_path_and_the_export_command(tmp_path):
    """One line, and no configuration-evaluation traceback: an InferenceError ends ``monai.bundle run`` with it."""
    with pytest.raises(OnnxModelError) as info:
        _onnx_config(tmp_path).get_parsed_content("network")
    assert isinstance(info.value, InferenceError)
    expected = onnx_export_command(
        tmp_path / "models" / "model.onnx",
        tmp_path / "models" / "model.pt",
        tmp_path / "configs" / "inference.json",
        [1, 4, 32, 32, 32],
    )
    assert str(info.value) == f"ONNX model {tmp_path / 'models' / 'model.onnx'} not found; export it with: {expected}"
    assert "\n" not in str(info.value) and '--input_shape "[1, 4, 32, 32, 32]"' in expected


def test_config_refuses_a_model_exported_for_other_windows(bundle):
    with pytest.raises(
        OnnxModelError, match=r"takes \['B', 4, 32, 32, 32\], the run gives windows of \[4, 48, 48, 48\]"
    ):
        _onnx_config(bundle, roi_size=[48, 48, 48]).get_parsed_content("network")


def test_overlays_disable_the_checkpoint_loader():
    """inference_onnx.json and inference_trt.json disable ``handlers#0``: it must be the CheckpointLoader."""
    configs = BUNDLE / "configs"
    for overlay in ("inference_onnx.json", "inference_openvino.json", "inference_trt.json"):
        parser = ConfigParser()
        parser.read_config([str(configs / "inference.json"), str(configs / overlay)])
        assert parser["handlers"][0]["_target_"] == "CheckpointLoader", overlay
        assert parser["handlers"][0]["_disabled_"] is True, overlay
    trt = ConfigParser.load_config_file(str(configs / "inference_trt.json"))
    assert "model_trt.ts" in trt["network_def"]


def _infer(bundle: Path, datalist: Path, out_dir: Path, onnx: bool, overlay: str = "inference_onnx.json") -> Path:
    configs = ["inference.json", "quick.json"] + ([overlay] if onnx else [])
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(bundle),
        datalist=str(datalist),
        output_dir=str(out_dir),
        spacing=[4.0, 4.0, 4.0],
        onnx_threads=1,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.parser.get_parsed_content("network"), OnnxNetwork) == onnx
    workflow.run()
    workflow.finalize()
    return out_dir / "case_seg.nii.gz"


OVERLAYS = ["inference_onnx.json"] + (["inference_openvino.json"] if importlib.util.find_spec("openvino") else [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_exported_model_config_matches_eager_inference(bundle, brats_cohort, tmp_path, overlay):
    case = sorted(p for p in brats_cohort.iterdir() if p.is_dir())[0]
    files = [next(case.glob(f"*_{token}.nii.gz")) for token in ("t1", "t1ce", "t2", "flair")]
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps([{"case": "case", "image": [str(f) for f in files], "modalities": MODALITIES}]))
    eager = _infer(bundle, datalist, tmp_path / "eager", onnx=False)
    onnx = _infer(bundle, datalist, tmp_path / "onnx", onnx=True, overlay=overlay)
    eager_img, onnx_img = nib.load(eager), nib.load(onnx)
    assert onnx_img.shape == eager_img.shape and np.allclose(onnx_img.affine, eager_img.affine)
    eager_regions = label_map_to_regions(np.asarray(eager_img.dataobj))
    onnx_regions = label_map_to_regions(np.asarray(onnx_img.dataobj))
    assert all(0 < r.sum() < r.numel() for r in eager_regions)  # every region is there and is not everything
    dice = brats_region_metrics(onnx_regions, eager_regions, metrics=("dice",))["dice"]
    assert min(dice) > 0.995, dice


def test_benchmark_export_compares_the_backends_on_one_window():
    """``scripts/benchmark_export.py``'s workload runs (its figures are not checked: they belong to the machine)."""
    from brainmvp_components.benchmarks.export import run, table

    result = run(preset="tiny", repeats=1)
    rows = {r["backend"]: r for r in result["rows"]}
    assert list(rows)[:2] == ["eager", "onnxruntime"] and result["settings"]["input_shape"] == WINDOW
    for name in ("onnxruntime", "openvino"):
        if name in rows:
            assert rows[name]["max_abs_diff"] < 1e-3 and rows[name]["labels_agree"] > 0.999, rows[name]
    assert table(result).count("\n") == len(rows) + 1
