"""scripts/benchmark_pipeline.py at toy sizes: each variant segments NIfTI cases through the bundle's configs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brainmvp_components.benchmarks.pipeline import SEGRESNET, main, prepare_bundle, prepare_cases

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK = REPO_ROOT / "bundles" / "brainmvp_brats_seg" / "configs" / "quick.json"


def test_cases_are_copies_of_one_volume(tmp_path):
    cases = prepare_cases(tmp_path, 2, spacing=4.0)
    folders = sorted(p.name for p in cases.iterdir())
    assert folders == ["case0", "case1"]
    files = sorted(p.name for p in (cases / "case1").iterdir())
    assert len(files) == 4 and all(f.startswith("case1_") for f in files)  # four modalities, no label
    first, second = (nib.load(next((cases / c).glob("*_flair.nii.gz"))) for c in folders)
    assert np.array_equal(first.get_fdata(), second.get_fdata())


def test_variants_segment_every_case(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["--work-dir", str(tmp_path), "--extra-configs", str(QUICK), "--spacing", "4", "--cases", "2",
                 "--variants", "eager,openvino", "--threads", "1", "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = {r["variant"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"eager", "openvino"}
    for name, row in results.items():
        assert row["cases"] == 2 and row["case_s"] > 0 and row["first_case_s"] > 0 and row["peak_rss_gib"] > 0
        labels = sorted((tmp_path / "outputs" / name).glob("*_seg.nii.gz"))
        assert [p.name for p in labels] == ["case0_seg.nii.gz", "case1_seg.nii.gz"]
        source = nib.load(next((tmp_path / "cases_4mm_x2" / "case0").glob("*_t1.nii.gz")))
        assert nib.load(labels[0]).shape == source.shape  # written back on the input grid
    assert (tmp_path / "bundle_bundle_quick" / "models" / "model.onnx").is_file()  # exported for openvino
    assert "| eager |" in printed and "| openvino |" in printed and "case / eager" in printed


def test_segresnet_anchor_is_the_model_zoo_network(tmp_path):
    from monai.networks.nets import SegResNet

    root = prepare_bundle(tmp_path, "segresnet", [])
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    settings = {k: v for k, v in SEGRESNET["network_def"].items() if k != "_target_"}
    assert state.keys() == SegResNet(**settings).state_dict().keys()
    assert SEGRESNET["roi_size"] == [240, 240, 160] and SEGRESNET["sw_overlap"] == 0.5
