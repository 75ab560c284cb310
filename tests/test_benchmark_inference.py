"""scripts/benchmark_inference.py at toy sizes: the window arithmetic, the figures, the output comparisons.

The authors' code is never vendored here: their side is exercised with a stand-in checkout written into a
temporary folder, whose ``Downstream/model/Uni_unet.py`` is this project's tiny UniUNet under the authors' class
name, and whose ``Downstream/train_utils.py`` ``inference`` runs MONAI's sliding window the way theirs calls it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_inference.py"

FAKE_UNI_UNET = '''
import torch

from brainmvp_components.networks import UniUNet, uniformer_tiny


class UniUnet(UniUNet):
    """Stand-in for the authors' network: our tiny UniUNet under their class name and signature."""

    def __init__(self, input_shape, in_channels=4, out_channels=3, init_channels=64, p=0.2, multi_scale=False):
        super().__init__(uniformer_tiny(in_channels=in_channels), in_channels=in_channels, out_channels=out_channels)

    def forward(self, x, location=None):
        return super().forward(x)
'''

FAKE_TRAIN_UTILS = """
from monai.inferers import sliding_window_inference


def inference(input, model, patch_shape=128):
    return sliding_window_inference(input, (patch_shape,) * 3, 1, lambda w: model(w, None), overlap=0.5)
"""


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_inference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    """The command line (``parse_args``, ``main``)."""
    return _load_script()


@pytest.fixture(scope="module")
def bench():
    """The benchmark itself."""
    from brainmvp_components.benchmarks import inference

    return inference


def _fake_authors_repo(root: Path, uni_unet: str = FAKE_UNI_UNET) -> Path:
    (root / "Downstream" / "model").mkdir(parents=True)
    (root / "Downstream" / "model" / "Uni_unet.py").write_text(uni_unet)
    (root / "Downstream" / "train_utils.py").write_text(FAKE_TRAIN_UTILS)
    return root


def _cfg(bench, tmp_path: Path, variant: str, **overrides) -> dict:
    """A child configuration of ours at a toy size (4 x 64 x 64 x 48, tiny preset, 32^3 windows, 1 run)."""
    args = _load_script().parse_args(["--volume", "4,64,64,48", "--roi", "32", "--preset", "tiny", "--large-roi", "64"])
    modifiers = bench.parse_variant(variant)
    cfg = {
        "side": "ours",
        "variant": variant,
        "modifiers": list(modifiers),
        "preset": "tiny",
        **bench.inferer_settings(modifiers, args),
        "volume": [4, 64, 64, 48],
        "windows": 1,
        "warmup": 0,
        "threads": 0,
        "rss_limit_gb": 0,
        "seed": 0,
        "keep_windows": 1,
        "round": 0,
        "dump": str(tmp_path / f"{variant}.pt"),
    }
    cfg.update(overrides)
    return cfg


def test_window_counts(bench):
    """48 windows for a BraTS volume at 96^3 / 0.5 (the authors' setting), 18 at 128^3 / 0.25, 1 for SegResNet."""
    assert bench.window_count((240, 240, 155), (96, 96, 96), 0.5) == 48
    assert bench.window_count((240, 240, 155), (128, 128, 128), 0.25) == 18
    assert bench.window_count((240, 240, 155), (240, 240, 160), 0.5) == 1
    assert bench.window_count((64, 64, 48), (32, 32, 32), 0.5) == 18
    assert bench.window_count((64, 64, 48), (64, 64, 64), 0.25) == 1


def test_variants_and_their_settings(bench, script):
    args = script.parse_args([])
    assert args.volume == [4, 240, 240, 155] and args.roi == 96 and args.overlap == 0.5
    assert bench.parse_variant("fp32") == ()
    assert bench.parse_variant("bf16+channels_last") == ("channels_last", "bf16")
    with pytest.raises(ValueError, match="unknown variant modifier"):
        bench.parse_variant("fp16")
    assert bench.inferer_settings((), args) == {"roi": [96] * 3, "overlap": 0.5, "sw_batch_size": 1, "mode": "constant"}
    bundle = bench.inferer_settings(("bundle",), args)  # read from the bundle's inference.json
    assert bundle == {"roi": [96] * 3, "overlap": 0.5, "sw_batch_size": 2, "mode": "gaussian"}
    assert bench.inferer_settings(("sw_batch", "large_window"), args) == {
        "roi": [128] * 3,
        "overlap": 0.25,
        "sw_batch_size": 4,
        "mode": "constant",
    }
    env, error = bench.allocator_env(("glibc_keep",))
    assert error is None and env == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def test_variants_in_process_agree_and_are_timed(bench, tmp_path, capsys, script):
    """fp32, channels_last, sw_batch (bundle's gaussian blending) and large_window of ours and the SegResNet
    baseline, one window each: the figures, the window arithmetic and the output comparisons."""
    configs = [
        _cfg(bench, tmp_path, "fp32"),
        _cfg(bench, tmp_path, "channels_last"),
        _cfg(bench, tmp_path, "bundle+sw_batch"),
        _cfg(bench, tmp_path, "large_window"),
        {
            **_cfg(bench, tmp_path, "fp32", dump=None),
            "variant": "segresnet",
            "side": "segresnet",
            "roi": [64, 64, 48],
            "sw_batch_size": 1,
            "mode": "constant",
        },
    ]
    results = [{**cfg, **bench.run_inference(cfg)} for cfg in configs]
    for r in results:
        assert "error" not in r, r
        assert r["windows_total"] == r["windows_planned"]
        assert r["output_shape"] == [1, 3, 64, 64, 48] and r["output_finite"]
        assert r["peak_gib"] > 0 and r["per_window_s"] > 0
    fp32, channels_last, sw_batch, large, segresnet = results
    assert (fp32["windows_run"], fp32["windows_total"], fp32["scaled"]) == (1, 18, True)
    assert fp32["whole_volume_s"] == pytest.approx(fp32["stitching_s"] + 18 * fp32["per_window_s"])
    assert (sw_batch["windows_run"], sw_batch["sw_batch_size"], sw_batch["mode"]) == (4, 4, "gaussian")
    assert (large["windows_run"], large["windows_total"], large["scaled"]) == (1, 1, False)
    assert large["whole_volume_s"] == large["inferer_s"]
    assert (segresnet["windows_total"], segresnet["parameters_m"] > 4) == (1, True)

    comparisons = bench.compare_outputs(results)["variants_vs_fp32"]
    assert comparisons["channels_last"]["max_abs_diff"] < 1e-4
    assert comparisons["channels_last"]["label_agreement"] > 0.999
    assert comparisons["bundle+sw_batch"]["max_abs_diff"] < 1e-4  # window outputs: the blending comes after
    assert "other windows" in comparisons["large_window"]["note"]

    summary = bench.summarise(results)
    assert summary["fp32"]["vs_segresnet"]["time"] == pytest.approx(
        fp32["whole_volume_s"] / segresnet["whole_volume_s"]
    )
    assert "vs_authors" not in summary["fp32"]
    args = script.parse_args(["--volume", "4,64,64,48", "--roi", "32", "--preset", "tiny", "--windows", "1"])
    bench.print_report(args, summary, {"variants_vs_fp32": comparisons})
    out = capsys.readouterr().out
    assert "full window count for 64 x 64 x 48: 18 at 32^3 / overlap 0.5" in out
    assert "| ours UniUNet | channels_last | 32^3 / 0.5 / 1 / constant | 1 / 18 |" in out
    assert "| SegResNet (model zoo) | segresnet | 64x64x48 / 0.5 / 1 / constant | 1 / 1 |" in out


def test_side_by_side_with_a_stand_in_authors_checkout(bench, tmp_path, capsys, monkeypatch, script):
    """The whole parent: the authors' side first (its weights saved), ours on those weights, JSON written."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    repo = _fake_authors_repo(tmp_path / "BrainMVP")
    out_json = tmp_path / "figures.json"
    report = script.main(
        ["--volume", "4,64,64,32", "--roi", "32", "--preset", "tiny", "--windows", "2", "--warmup", "0",
         "--variants", "fp32", "--no-segresnet", "--authors-repo", str(repo), "--json", str(out_json)]
    )  # fmt: skip
    assert json.loads(out_json.read_text()) == json.loads(json.dumps(report))
    assert report["window_counts"]["roi"] == 9
    authors, ours = report["results"]
    for r in (authors, ours):
        assert "error" not in r, r
        assert (r["windows_run"], r["windows_total"], r["scaled"]) == (2, 9, True)
        assert {"per_window_s", "stitching_s", "whole_volume_s", "peak_gib"} <= set(r)
    assert authors["variant"] == "authors" and ours["weights"] == "the authors' (loaded as they are)"
    versus = report["comparisons"]["ours_fp32_vs_authors"]
    assert versus["windows"] == 2 and versus["max_abs_diff"] < 1e-4
    ratio = report["summary"]["fp32"]["vs_authors"]
    assert ratio["time"] == pytest.approx(ours["whole_volume_s"] / authors["whole_volume_s"])
    out = capsys.readouterr().out
    assert "| authors' UniUnet | authors | 32^3 / 0.5 / 1 / constant | 2 / 9 |" in out
    assert "equal weights, ours fp32 vs the authors' on 2 window(s)" in out
    assert "fp32 / authors: whole-volume time" in out


def test_authors_repo_that_is_not_a_checkout(bench, tmp_path, capsys, script):
    with pytest.raises(SystemExit) as stop:
        script.parse_args(["--authors-repo", str(tmp_path)])
    assert stop.value.code == 2
    assert "not a checkout of the authors' BrainMVP repository" in capsys.readouterr().err


def test_authors_code_names_a_missing_package(bench, tmp_path, monkeypatch):
    repo = _fake_authors_repo(tmp_path / "BrainMVP", uni_unet="import brainmvp_absent_package\n")
    (repo / "requirements.txt").write_text("brainmvp_absent_package==1.2.3\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("model", "model.Uni_unet", "train_utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    cfg = {**_cfg(bench, tmp_path, "fp32"), "side": "authors", "authors_repo": str(repo)}
    assert bench.run_inference(cfg) == {
        "error": "the authors' code needs the package 'brainmvp_absent_package', which is not installed: "
        "pip install brainmvp_absent_package==1.2.3 (pinned in their requirements.txt)"
    }
    for name in ("model", "model.Uni_unet", "train_utils"):
        sys.modules.pop(name, None)
