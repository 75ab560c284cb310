"""scripts/benchmark_window_settings.py: each sliding-window setting segments labelled cases, timed and scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainmvp_components.benchmarks.pipeline import prepare_bundle
from brainmvp_components.benchmarks.window_settings import SETTINGS, describe, main, report, setting_overrides
from brainmvp_components.data.cohort.writer import make_cohort
from brainmvp_components.data.datalist import build_datalist

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK = REPO_ROOT / "bundles" / "brainmvp_brats_seg" / "configs" / "quick.json"
DEFAULTS = {"roi_size": [96, 96, 96], "sw_overlap": 0.5, "sw_batch_size": 2, "mode": "gaussian"}


def test_settings_are_overrides_of_the_bundle_defaults():
    assert setting_overrides("default", DEFAULTS) == {}
    assert setting_overrides("window +32", DEFAULTS) == {"roi_size": [128, 128, 128]}
    assert setting_overrides("window +32", {**DEFAULTS, "roi_size": [32, 32, 32]}) == {"roi_size": [64, 64, 64]}
    assert describe({}, DEFAULTS) == "96^3, overlap 0.5, gaussian, 2 per forward"
    overrides = setting_overrides("constant blending", DEFAULTS)
    assert describe(overrides, DEFAULTS) == "96^3, overlap 0.5, constant, 2 per forward"
    assert describe({"sw_overlap": 0.25, "sw_batch_size": 4}, DEFAULTS) == "96^3, overlap 0.25, gaussian, 4 per forward"
    assert {"default", "overlap 0.25", "constant blending", "1 window per forward"} <= set(SETTINGS)


def test_report_flags_settings_that_lose_dice():
    rows = [
        {"setting": "default", "describe": "d", "case_s": 2.0, "voxels_differing": 0.0,
         **{f"dice_{r}": 0.8 for r in ("tc", "wt", "et")}, **{f"diff_{r}": 0.0 for r in ("tc", "wt", "et")}},
        {"setting": "overlap 0.25", "describe": "o", "case_s": 1.0, "voxels_differing": 0.01,
         **{f"dice_{r}": 0.79 for r in ("tc", "wt", "et")}, **{f"diff_{r}": -0.01 for r in ("tc", "wt", "et")}},
    ]  # fmt: skip
    table = report(rows, tolerance=0.005)
    assert "| overlap 0.25 | o | 1.00 | 0.50 |" in table
    assert table.count("| yes |") == 1 and table.count("| NO |") == 1


def test_settings_segment_and_score_labelled_cases(tmp_path, capsys):
    make_cohort(tmp_path / "brats", "brats", 3, seed=0, spacing=4.0)
    datalist = tmp_path / "brats" / "datalist.json"
    build_datalist(tmp_path / "brats", datalist, val_fraction=0.0, test_fraction=0.6)  # 2 test cases
    bundle = prepare_bundle(tmp_path, "bundle", [str(QUICK)])
    out = tmp_path / "rows.json"
    code = main(["--bundle-root", str(bundle), "--datalist", str(datalist), "--work-dir", str(tmp_path / "runs"),
                 "--extra-configs", str(QUICK), "--settings", "overlap 0.75", "--threads", "1",
                 "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    record = json.loads(out.read_text())
    assert record["defaults"] == {"roi_size": [32, 32, 32], "sw_overlap": 0.25, "sw_batch_size": 4, "mode": "gaussian"}
    rows = {row["setting"]: row for row in record["rows"]}
    assert set(rows) == {"default", "overlap 0.75"}  # the default is always run: the others compare with it
    assert rows["default"]["voxels_differing"] == 0 and rows["default"]["diff_wt"] == 0
    assert rows["overlap 0.75"]["describe"] == "32^3, overlap 0.75, gaussian, 4 per forward"
    for row in rows.values():
        assert row["cases"] == 2 and row["case_s"] > 0 and 0 <= row["dice_wt"] <= 1
        assert len(list((tmp_path / "runs" / row["setting"].replace(" ", "_")).glob("*_seg.nii.gz"))) == 2
    assert "| overlap 0.75 |" in printed and "case / default" in printed


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--bundle-root", str(tmp_path), "--datalist", str(tmp_path / "d.json"), "--work-dir", str(tmp_path),
              "--settings", "overlap 0.9"])  # fmt: skip
