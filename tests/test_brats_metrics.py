"""BraTS metrics: Dice and HD95 per region with the challenge's conventions, reports, and the official package."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, distance_transform_edt

from brainmvp_components.metrics.segmentation import (
    BRATS_EMPTY_HD95,
    METRIC_COLUMNS,
    BratsRegionMetric,
    brats_region_metrics,
    evaluate_segmentation_files,
    hd95_brats,
)


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def _pooled_hd95(a, b, spacing):
    """Reference: 95th percentile of both directed border distance sets pooled (the BraTS definition)."""
    ea, eb = a ^ binary_erosion(a), b ^ binary_erosion(b)
    da = distance_transform_edt(~eb, sampling=spacing)[ea]
    db = distance_transform_edt(~ea, sampling=spacing)[eb]
    return np.percentile(np.concatenate([da, db]), 95)


def test_empty_conventions():
    empty, full = np.zeros((3, 8, 8, 8), bool), np.zeros((3, 8, 8, 8), bool)
    full[:, 2:5, 2:5, 2:5] = True
    both = brats_region_metrics(empty, empty)
    assert both == {"dice": [1.0] * 3, "hd95": [0.0] * 3}
    for pred, ref in ((empty, full), (full, empty)):
        one = brats_region_metrics(pred, ref)
        assert one == {"dice": [0.0] * 3, "hd95": [BRATS_EMPTY_HD95] * 3}


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 3.0)])
def test_hd95_matches_pooled_definition_and_honours_spacing(spacing):
    a = _cube((30, 30, 30), (5, 6, 7), (15, 20, 18))
    b = _cube((30, 30, 30), (8, 5, 9), (20, 17, 22))
    b[20:24, 3:6, 3:9] = True
    assert hd95_brats(a, b, spacing) == pytest.approx(_pooled_hd95(a, b, spacing), rel=1e-6)
    dice = brats_region_metrics(a[None], b[None], spacing)["dice"][0]
    assert dice == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_cumulative_metric_reads_spacing_from_meta():
    from monai.data import MetaTensor

    a = _cube((20, 20, 20), (2, 2, 2), (10, 10, 10))
    b = _cube((20, 20, 20), (4, 2, 2), (12, 10, 10))
    pred = torch.as_tensor(np.stack([a, a, a])[None]).float()
    ref = MetaTensor(
        torch.as_tensor(np.stack([b, b, b])[None]).float(), affine=torch.diag(torch.tensor([2.0, 2, 2, 1]))
    )
    metric = BratsRegionMetric("hd95", region="ET")
    metric(pred, ref)
    assert metric.aggregate().item() == pytest.approx(2 * _pooled_hd95(a, b, (1, 1, 1)))


def _write(path, array, affine):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))
    return str(path)


def _label_pair(seed: int, enhancing: int):
    rng = np.random.default_rng(seed)
    ref = np.zeros((40, 44, 36), np.uint8)
    c = rng.integers(14, 24, 3)
    ref[c[0] - 8 : c[0] + 8, c[1] - 9 : c[1] + 7, c[2] - 6 : c[2] + 8] = 2
    ref[c[0] - 4 : c[0] + 5, c[1] - 4 : c[1] + 4, c[2] - 3 : c[2] + 4] = 1
    ref[c[0] - 2 : c[0] + 2, c[1] - 3 : c[1] + 2, c[2] - 2 : c[2] + 3] = enhancing
    pred = np.roll(ref, tuple(rng.integers(-3, 4, 3)), axis=(0, 1, 2))
    pred[rng.random(ref.shape) < 0.01] = 2
    return pred, ref


def _distributed_metric_worker(rank: int, init_file: str, results: str) -> None:
    """One rank of a two-process gloo group: rank 0 scores two perfect cases, rank 1 one missed case."""
    import torch.distributed as dist

    from brainmvp_components.metrics.segmentation import BratsMetricHandler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        masks = torch.zeros(1, 3, 8, 8, 8)
        masks[:, :, 2:5, 2:5, 2:5] = 1
        missed = torch.zeros_like(masks)
        missed[:, :, 5:7, 5:7, 5:7] = 1
        batches = [(masks, masks), (masks, masks)] if rank == 0 else [(missed, masks)]
        metric, handler = BratsRegionMetric("dice"), BratsMetricHandler("dice", save_details=False)
        handler.reset()
        for y_pred, y in batches:
            metric(y_pred, y)
            handler.update((y_pred, y))
        values = [float(metric.aggregate()), float(handler.compute())]
        torch.save(values, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def test_metric_and_handler_gather_across_ranks(tmp_path):
    """Under torch.distributed, every rank aggregates the cases of all ranks (MONAI's buffer all-gather)."""
    import torch.multiprocessing as mp

    results = str(tmp_path / "values")
    mp.spawn(_distributed_metric_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(f"{results}.{rank}") == pytest.approx([2 / 3, 2 / 3])


def test_evaluate_files_writes_reports(tmp_path):
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    pairs = []
    for i in range(3):
        pred, ref = _label_pair(i, 4)
        if i == 2:
            pred[pred == 4] = 1  # no enhancing predicted: ET Dice 0, HD95 373.13
        pairs.append(
            (
                _write(tmp_path / f"c{i}_pred.nii.gz", pred, affine),
                _write(tmp_path / f"BraTS_{i:05d}_seg.nii.gz", ref, affine),
            )
        )
    rows = evaluate_segmentation_files(pairs, tmp_path / "report", convention="brats2021")
    assert [r["case"] for r in rows] == ["BraTS_00000", "BraTS_00001", "BraTS_00002"]
    assert rows[2]["Dice_ET"] == 0.0 and rows[2]["HD95_ET"] == BRATS_EMPTY_HD95
    with open(tmp_path / "report" / "metrics_per_case.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and set(METRIC_COLUMNS) <= set(table[0])
    summary = json.loads((tmp_path / "report" / "metrics_summary.json").read_text())
    values = [r["Dice_WT"] for r in rows]
    assert summary["metrics"]["Dice_WT"]["mean"] == pytest.approx(np.mean(values))
    assert summary["metrics"]["Dice_WT"]["median"] == pytest.approx(np.median(values))
    assert summary["metrics"]["Dice_WT"]["std"] == pytest.approx(np.std(values))
    assert (tmp_path / "report" / "metrics_summary.csv").is_file()


def test_case_ids():
    from brainmvp_components.data.discovery import case_id_from_path

    assert case_id_from_path("/d/BraTS2021_00012/BraTS2021_00012_t1ce.nii.gz") == "BraTS2021_00012"
    assert case_id_from_path("BraTS-GLI-00001-000-seg.nii.gz") == "BraTS-GLI-00001-000"
    assert case_id_from_path("case7.nii.gz") == "case7"


def test_agrees_with_official_brats_evaluation(tmp_path):
    """Global Dice and HD95 per region equal those of the official BraTS package (panoptica, ``gli`` config)."""
    pytest.importorskip("brats_evaluation")
    from importlib.resources import files

    from panoptica import Panoptica_Evaluator

    config = str(files("brats_evaluation").joinpath("configs", "config_gli.yaml"))
    evaluator = Panoptica_Evaluator.load_from_config(config)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for i in range(3):
        pred, ref = _label_pair(10 + i, 3)
        p = _write(tmp_path / f"pred_{i}.nii.gz", pred, affine)
        r = _write(tmp_path / f"ref_{i}.nii.gz", ref, affine)
        ours = evaluate_segmentation_files([(p, r)], convention="brats2023")[0]
        theirs = {k: v.to_dict(True) for k, v in evaluator.evaluate(p, r).items()}
        for region in ("tc", "wt", "et"):
            assert ours[f"Dice_{region.upper()}"] == pytest.approx(theirs[region]["global_bin_dsc"], abs=1e-6)
            assert ours[f"HD95_{region.upper()}"] == pytest.approx(theirs[region]["global_bin_hd95"], abs=1e-4)
