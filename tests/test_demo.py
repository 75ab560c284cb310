"""The demo end to end: its quick configuration runs the whole chain, and one seed gives the same figures twice."""

from __future__ import annotations

import json
import subprocess

import pytest

from brainmvp_components.metrics.learning_report import SUMMARY_KEYS, TARGETS


def _figures(summary: dict) -> dict:
    """A summary without what varies from run to run by design: wall times (and the time budget's target)."""
    figures = {k: v for k, v in summary.items() if k != "seconds"}
    figures["targets"] = {k: v for k, v in summary["targets"].items() if not k.startswith("seconds.")}
    return figures


@pytest.mark.slow
def test_quick_demo_twice_with_one_seed_gives_the_same_summary(tmp_path, repo_root, subprocess_env):
    data = tmp_path / "cohorts"  # built by the first run, read by the second: the data are not what is tested
    summaries = []
    for run in ("first", "second"):
        env = {
            **subprocess_env,
            "DEMO_QUICK": "1",
            "DEMO_SEED": "5",
            "DEMO_OUT": str(tmp_path / run),
            "DEMO_DATA": str(data),
            "DEMO_REQUIRE_TARGETS": "0",
        }
        result = subprocess.run(
            ["bash", str(repo_root / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=1200
        )
        assert result.returncode == 0, f"demo ({run} run) failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        summaries.append(json.loads((tmp_path / run / "summary.json").read_text()))
    first, second = summaries
    assert set(SUMMARY_KEYS) <= set(first) and first["seed"] == 5 and set(first["targets"]) == set(TARGETS)
    assert set(first["seg_dice_missing"]) == {"t1", "t1c", "t2", "flair"}
    assert set(first["seg_dice_missing_baselines"]) == {"zeros", "mean"}
    assert first["seg_cases"] >= 2 and first["cls"]["num_cases"] >= 2
    assert _figures(first) == _figures(second)
    # every held-out case was segmented once with all modalities and once per missing modality and fill
    demo = tmp_path / "first" / "runs" / "seg" / "demo"
    dice = json.loads((demo / "dice_summary.json").read_text())
    assert len(dice["cases"]["missing"]) == 4 * len(dice["cases"]["all_modalities"]) == 4 * first["seg_cases"]
    for fill in ("templates", "zeros", "mean"):
        assert len(list((demo / fill).glob("*__no_*_seg.nii.gz"))) == len(dice["cases"]["missing"])
