"""BraTS segmentation metrics: per-region Dice and HD95 with the challenge's conventions.

Regions are the BraTS evaluation regions: tumour core (TC), whole tumour (WT) and enhancing tumour (ET).
Per case and region:

- Dice: MONAI :class:`~monai.metrics.DiceMetric` (``ignore_empty=False``): both masks empty gives 1, exactly
  one empty gives 0.
- HD95: the 95th percentile of the pooled symmetric surface distances (prediction border to reference and
  reference border to prediction, in mm using the voxel spacing), computed from MONAI's
  :func:`~monai.metrics.utils.get_edge_surface_distance`. This is the BraTS (and ``panoptica``) definition;
  MONAI's :class:`~monai.metrics.HausdorffDistanceMetric` instead takes the larger of the two directed 95th
  percentiles, which can differ by a voxel or so. Both empty gives 0; exactly one empty gives
  :data:`BRATS_EMPTY_HD95` (373.13 mm, the diagonal of the BraTS grid), as the challenge reports it.

Use :class:`BratsMetricHandler` for validation during training (a MONAI/ignite metric handler),
:class:`BratsEvaluationSaver` to write per-case CSV and summary files from an evaluator, and
:func:`evaluate_segmentation_files` to score prediction files against reference files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric, DiceMetric
from monai.metrics.utils import get_edge_surface_distance
from monai.utils import MetricReduction

from brainmvp_components.data.brats import REGION_NAMES
from brainmvp_components.data.discovery import case_id_from_path
from brainmvp_components.utils.writers import write_csv, write_json

__all__ = [
    "REGIONS",
    "BRATS_EMPTY_HD95",
    "METRIC_COLUMNS",
    "hd95_brats",
    "brats_region_metrics",
    "label_map_to_regions",
    "BratsRegionMetric",
    "BratsMetricHandler",
    "BratsEvaluationSaver",
    "evaluate_segmentation_files",
    "write_metrics_report",
    "summarise_metrics",
    "case_name_formatter",
    "OverlaySaver",
]

logger = logging.getLogger(__name__)

REGIONS: tuple[str, ...] = REGION_NAMES
"""BraTS evaluation regions, in the order of the network's output channels."""

BRATS_EMPTY_HD95 = 373.13
"""HD95 (mm) that BraTS reports when exactly one of prediction and reference is empty."""

METRIC_COLUMNS: tuple[str, ...] = tuple(f"{m}_{r}" for m in ("Dice", "HD95") for r in REGIONS)
"""Metric columns of the per-case CSV: ``Dice_TC, Dice_WT, Dice_ET, HD95_TC, HD95_WT, HD95_ET``."""

SUMMARY_STATS: tuple[str, ...] = ("mean", "std", "median")


def _as_bool(x) -> torch.Tensor:
    x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    return x.detach().cpu() > 0.5 if x.is_floating_point() else x.detach().cpu() != 0


def hd95_brats(pred, ref, spacing: Sequence[float] | None = None, empty_value: float = BRATS_EMPTY_HD95) -> float:
    """HD95 (mm) of two binary masks ``(H, W, D)`` with BraTS conventions (see the module docstring)."""
    pred, ref = _as_bool(pred), _as_bool(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and reference {tuple(ref.shape)} differ in shape")
    pred_empty, ref_empty = not bool(pred.any()), not bool(ref.any())
    if pred_empty and ref_empty:
        return 0.0
    if pred_empty or ref_empty:
        return float(empty_value)
    spacing = None if spacing is None else [float(s) for s in spacing]
    _, distances, _ = get_edge_surface_distance(pred, ref, spacing=spacing, symmetric=True, warn_empty=False)
    pooled = torch.cat([d.reshape(-1).double().cpu() for d in distances]).numpy()
    return float(np.percentile(pooled, 95))


def brats_region_metrics(
    pred, ref, spacing: Sequence[float] | None = None, metrics: Sequence[str] = ("dice", "hd95")
) -> dict[str, list[float]]:
    """Dice and/or HD95 of each region.

    Args:
        pred: binary region masks ``(R, H, W, D)`` (tensor or array; floats are thresholded at 0.5).
        ref: reference region masks, same shape.
        spacing: voxel size in mm along ``H, W, D`` (``None``: 1 mm).
        metrics: which of ``"dice"`` and ``"hd95"`` to compute.

    Returns:
        ``{"dice": [R values], "hd95": [R values]}`` (the requested keys).
    """
    pred, ref = _as_bool(pred), _as_bool(ref)
    if pred.shape != ref.shape or pred.ndim != 4:
        raise ValueError(
            f"expected region masks (R, H, W, D) of one shape, got {tuple(pred.shape)}, {tuple(ref.shape)}"
        )
    result = {}
    if "dice" in metrics:
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(
            pred[None].float(), ref[None].float()
        )
        result["dice"] = [float(v) for v in dice[0]]
    if "hd95" in metrics:
        result["hd95"] = [hd95_brats(p, r, spacing) for p, r in zip(pred, ref)]
    return result


def label_map_to_regions(label_map, convention: str = "brats2021") -> torch.Tensor:
    """BraTS label map ``(1, H, W, D)`` or ``(H, W, D)`` -> region masks ``(3, H, W, D)`` (TC, WT, ET)."""
    from brainmvp_components.transforms.labels import BratsLabelToRegions

    label = torch.as_tensor(np.asarray(label_map)) if not torch.is_tensor(label_map) else label_map
    return torch.as_tensor(BratsLabelToRegions(convention)(label))


def _spacing_of(x) -> list[float] | None:
    if isinstance(x, MetaTensor):
        return [float(s) for s in affine_to_spacing(x.affine, r=3)]
    return None


class BratsRegionMetric(CumulativeIterationMetric):
    """Per-region Dice or HD95 with BraTS conventions, as a MONAI cumulative metric.

    Args:
        metric: ``"dice"`` or ``"hd95"``.
        region: one of :data:`REGIONS` to report that region only; ``None`` reports all regions.
        reduction: reduction of :meth:`aggregate` (MONAI :class:`~monai.utils.MetricReduction`); the default
            averages cases and regions.

    ``__call__(y_pred, y)``: binarised region masks ``(B, R, H, W, D)`` (or lists of ``(R, H, W, D)``); the
    spacing of an HD95 comes from ``y``'s (else ``y_pred``'s) affine when it is a ``MetaTensor``.
    """

    def __init__(self, metric: str = "dice", region: str | None = None, reduction: str = MetricReduction.MEAN):
        super().__init__()
        if metric not in ("dice", "hd95"):
            raise ValueError(f'metric must be "dice" or "hd95", got {metric!r}')
        if region is not None and region.upper() not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS} or None, got {region!r}")
        self.metric = metric
        self.region_index = None if region is None else REGIONS.index(region.upper())
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y_pred.ndim != 5 or y_pred.shape != y.shape:
            raise ValueError(
                f"expected (B, R, H, W, D) predictions and labels of one shape, got {y_pred.shape}, {y.shape}"
            )
        regions = slice(None) if self.region_index is None else slice(self.region_index, self.region_index + 1)
        rows = []
        for b in range(y_pred.shape[0]):
            spacing = _spacing_of(y[b]) or _spacing_of(y_pred[b])
            rows.append(brats_region_metrics(y_pred[b, regions], y[b, regions], spacing, (self.metric,))[self.metric])
        return torch.tensor(rows, dtype=torch.float32)

    def aggregate(self, reduction: str | None = None):
        from monai.metrics.utils import do_metric_reduction

        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor")
        value, _ = do_metric_reduction(data, reduction or self.reduction)
        return value


class BratsMetricHandler(IgniteMetricHandler):
    """Ignite handler computing :class:`BratsRegionMetric` over an epoch (e.g. ``val_mean_dice``, ``val_hd95_et``).

    Args:
        metric, region: as :class:`BratsRegionMetric`.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: keep per-case values in ``engine.state.metric_details`` (for MetricsSaver).
    """

    def __init__(
        self,
        metric: str = "dice",
        region: str | None = None,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=BratsRegionMetric(metric=metric, region=region),
            output_transform=output_transform,
            save_details=save_details,
        )


def summarise_metrics(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation (population) and median of each metric column over cases."""
    summary = {}
    for column in METRIC_COLUMNS:
        values = np.array([float(r[column]) for r in rows if not math.isnan(float(r[column]))], dtype=np.float64)
        if values.size == 0:
            summary[column] = {s: float("nan") for s in SUMMARY_STATS} | {"count": 0}
            continue
        summary[column] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "median": float(np.median(values)),
            "count": int(values.size),
        }
    return summary


def write_metrics_report(rows: Sequence[dict], output_dir: str | Path, prefix: str = "metrics") -> dict[str, Path]:
    """Write ``<prefix>_per_case.csv`` (one row per case), ``<prefix>_summary.csv`` and ``<prefix>_summary.json``.

    Each row holds ``case`` and the :data:`METRIC_COLUMNS`. Files are written atomically. Returns their paths.
    """
    output_dir = Path(output_dir)
    paths = {
        "per_case": output_dir / f"{prefix}_per_case.csv",
        "summary_csv": output_dir / f"{prefix}_summary.csv",
        "summary_json": output_dir / f"{prefix}_summary.json",
    }
    write_csv(paths["per_case"], rows, ["case", *METRIC_COLUMNS])
    summary = summarise_metrics(rows)
    stats = [*SUMMARY_STATS, "count"]
    write_csv(
        paths["summary_csv"],
        [{"statistic": s, **{c: summary[c][s] for c in METRIC_COLUMNS}} for s in stats],
        ["statistic", *METRIC_COLUMNS],
    )
    write_json(paths["summary_json"], {"num_cases": len(rows), "metrics": summary})
    return paths


def case_name_formatter(metadict: dict, saver=None) -> dict:
    """``output_name_formatter`` for MONAI ``SaveImage``: names the output after the case, never after an image file.

    The case is the image's ``meta["case_id"]``, which :class:`~brainmvp_components.transforms.io.LoadModalitiesd`
    sets from the data's ``case`` (a case folder's name, a datalist entry's ``case`` or ``id``). Images loaded
    otherwise are named by :func:`~brainmvp_components.data.discovery.case_id_from_path` of their file.
    """
    metadict = metadict or {}
    case = metadict.get("case_id")
    if isinstance(case, (list, tuple)):
        case = case[0] if case else None
    source = metadict.get("filename_or_obj", "")
    return {
        "subject": str(case) if case else case_id_from_path(source) if source else "case",
        "idx": metadict.get("patch_index"),
    }


def _engine_items(engine) -> list[dict]:
    """The items of an evaluator's iteration: each decollated batch entry updated with its output entry."""
    outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
    batches = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
    return [{**batch, **output} for output, batch in zip(outputs, batches)]


def _load_label_map(path) -> MetaTensor:
    from monai.transforms import LoadImage

    if not Path(str(path)).is_file():
        raise FileNotFoundError(f"reference segmentation {str(path)!r} not found")
    return LoadImage(image_only=True, ensure_channel_first=True)(str(path))


def _case_row(case: str, pred_map, ref_map: MetaTensor, convention: str) -> dict:
    pred_map = torch.as_tensor(pred_map.as_tensor() if isinstance(pred_map, MetaTensor) else pred_map)
    if pred_map.ndim == 3:
        pred_map = pred_map[None]
    if tuple(pred_map.shape[1:]) != tuple(ref_map.shape[1:]):
        raise ValueError(
            f"{case}: prediction shape {tuple(pred_map.shape[1:])} differs from reference {tuple(ref_map.shape[1:])}"
        )
    spacing = _spacing_of(ref_map)
    values = brats_region_metrics(
        label_map_to_regions(pred_map.round(), convention),
        label_map_to_regions(ref_map.as_tensor(), convention),
        spacing,
    )
    row = {"case": case}
    row.update({f"Dice_{r}": v for r, v in zip(REGIONS, values["dice"])})
    row.update({f"HD95_{r}": v for r, v in zip(REGIONS, values["hd95"])})
    return row


def evaluate_segmentation_files(
    pairs: Sequence[tuple[str, str]],
    output_dir: str | Path | None = None,
    convention: str = "brats2021",
    case_ids: Sequence[str] | None = None,
) -> list[dict]:
    """Score BraTS label-map files: ``pairs`` of ``(prediction path, reference path)`` on the same grid.

    Returns one row per case (``case`` plus :data:`METRIC_COLUMNS`); with ``output_dir`` also writes the report
    of :func:`write_metrics_report`.
    """
    rows = []
    for i, (pred_path, ref_path) in enumerate(pairs):
        case = case_ids[i] if case_ids is not None else case_id_from_path(ref_path)
        if not Path(str(pred_path)).is_file():
            raise FileNotFoundError(f"{case}: prediction {str(pred_path)!r} not found")
        pred = _load_label_map(pred_path)
        ref = _load_label_map(ref_path)
        rows.append(_case_row(case, pred, ref, convention))
    if output_dir is not None:
        write_metrics_report(rows, output_dir)
    return rows


class BratsEvaluationSaver:
    """Evaluator handler: per-case BraTS metrics of the post-processed label map against the reference file.

    After each iteration it scores every item of ``engine.state.output`` (decollated): ``item[pred_key]`` is
    the predicted BraTS label map in the reference's grid (after ``Invertd``), ``item[reference_key]`` the
    path of the reference segmentation (keep it with ``CopyItemsd(keys="label", names="reference_path")`` before
    loading; a key starting with ``label_`` would be taken for meta data by ``Spacingd``). When the run
    completes it writes :func:`write_metrics_report` files to ``output_dir`` and logs the summary.

    Args:
        output_dir: where the CSV and JSON files go.
        convention: label convention of both maps (``"brats2021"`` or ``"brats2023"``).
        pred_key, reference_key: keys of the items of ``engine.state.output``.
    """

    def __init__(
        self,
        output_dir: str,
        convention: str = "brats2021",
        pred_key: str = "pred",
        reference_key: str = "reference_path",
    ) -> None:
        self.output_dir = output_dir
        self.convention = convention
        self.pred_key = pred_key
        self.reference_key = reference_key
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self.rows = []

    def _score(self, engine) -> None:
        for item in _engine_items(engine):
            ref_path = item.get(self.reference_key)
            if ref_path is None:
                raise KeyError(f"evaluation needs the reference path under {self.reference_key!r} in each item")
            case = str(item.get("case") or case_id_from_path(ref_path))
            row = _case_row(case, item[self.pred_key], _load_label_map(ref_path), self.convention)
            logger.info(case + ": " + ", ".join(f"{c} {row[c]:.4f}" for c in METRIC_COLUMNS))
            self.rows.append(row)

    def _write(self, engine) -> None:
        paths = write_metrics_report(self.rows, self.output_dir)
        summary = summarise_metrics(self.rows)
        logger.info(
            f"{len(self.rows)} cases; mean "
            + ", ".join(f"{c} {summary[c]['mean']:.4f}" for c in METRIC_COLUMNS)
            + f"; written to {paths['per_case'].parent}"
        )


class OverlaySaver:
    """Evaluator handler: PNG previews of the predicted tumour regions over chosen modalities of each case.

    Uses each item's model-space image (``item[image_key]``, channels named by ``modalities``) and region
    probabilities (``item[regions_key]``, copied before ``Invertd``, e.g. with ``CopyItemsd(keys="pred",
    names="pred_regions")``) and writes ``<case>_overlay_<modality>.png`` to ``output_dir`` with
    :func:`brainmvp_components.visualize.previews.save_overlay`. Imputed modalities are skipped.

    Args:
        output_dir: folder of the PNG files.
        modalities: the image's channel names (the model's input order).
        show: which modalities to draw under the regions.
        convention: label convention of the drawn label map.
    """

    def __init__(
        self,
        output_dir: str,
        modalities: Sequence[str] = ("t1", "t1c", "t2", "flair"),
        show: Sequence[str] = ("t1c", "flair"),
        convention: str = "brats2021",
        image_key: str = "image",
        regions_key: str = "pred_regions",
    ) -> None:
        from brainmvp_components.data.modalities import canonical_modalities

        self.output_dir = Path(output_dir)
        self.modalities = canonical_modalities(modalities)
        self.show = [m for m in canonical_modalities(show) if m in self.modalities]
        self.convention = convention
        self.image_key = image_key
        self.regions_key = regions_key

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        from brainmvp_components.transforms.labels import RegionsToBratsLabel
        from brainmvp_components.visualize.previews import save_overlay

        for item in _engine_items(engine):
            image, regions = item[self.image_key], item[self.regions_key]
            meta = image.meta if isinstance(image, MetaTensor) else {}
            case = str(item.get("case") or case_id_from_path(meta.get("filename_or_obj", "case")))
            imputed = {m for m in str(meta.get("imputed_modalities", "")).split(",") if m}
            label_map = RegionsToBratsLabel(self.convention)(torch.as_tensor(regions).detach().cpu())[0].numpy()
            for modality in self.show:
                if modality in imputed:
                    continue
                volume = torch.as_tensor(image[self.modalities.index(modality)]).detach().cpu().float().numpy()
                path = self.output_dir / f"{case}_overlay_{modality}.png"
                save_overlay(volume, label_map, path, title=f"{case}: predicted regions on {modality}")
