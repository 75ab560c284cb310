"""One report of what the bundles learned: held-out Dice, classification metrics, template and reconstruction
fidelity, each against its target, and the wall time of every stage.

:func:`build_learning_summary` gathers the figures the three bundles write (the pre-training ``evaluate.json``
report, the segmentation Dice summary with all modalities and with each one missing in turn, the classification
``evaluate.json``
metrics) into one dictionary whose schema :data:`SUMMARY_KEYS` fixes; :func:`summary_table` prints it with the
targets and whether each is met. The demo writes it to ``summary.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MISSING_FILLS",
    "SUMMARY_KEYS",
    "TARGETS",
    "build_learning_summary",
    "check_targets",
    "seeds_table",
    "summary_table",
]

SUMMARY_KEYS: tuple[str, ...] = (
    "seg_dice_all",
    "seg_dice_missing",
    "seg_dice_missing_baselines",
    "cls",
    "templates_r",
    "reconstruction_mse_ratio",
    "seconds",
    "targets",
)
"""Top-level keys of the summary."""

REGIONS: tuple[str, ...] = ("tc", "wt", "et")
TEMPLATE_MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
MISSING_FILLS: tuple[str, ...] = ("templates", "zeros", "mean")
"""How the demo fills a missing channel: the method's templates first, then the two baselines."""
CLS_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auc")

TARGETS: dict[str, tuple[str, float]] = {
    "seg_dice_all.wt": (">=", 0.85),
    "seg_dice_all.tc": (">=", 0.75),
    "seg_dice_all.et": (">=", 0.65),
    **{f"seg_dice_missing.{m}.wt": (">=", 0.80) for m in TEMPLATE_MODALITIES},
    "seg_dice_missing.t1c.tc": (">=", 0.65),
    "cls.balanced_accuracy": (">=", 0.80),
    "cls.auc": (">=", 0.90),
    **{f"templates_r.{m}": (">=", 0.6) for m in TEMPLATE_MODALITIES},
    "reconstruction_mse_ratio": ("<=", 0.45),
    "seconds.total": ("<=", 900.0),
}
"""``dotted key: (comparison, threshold)`` of each figure that shows learning, and the demo's time budget
(15 minutes on a 2-core CPU)."""


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _regions(dice: Mapping[str, Any], source: str) -> dict[str, float | None]:
    lowered = {str(k).lower(): v for k, v in dice.items()}
    missing = [r for r in REGIONS if r not in lowered]
    if missing:
        raise KeyError(f"{source} lacks Dice for region(s) {missing}; it has {sorted(lowered)}")
    return {r: _finite(lowered[r]) for r in REGIONS}


def _lookup(summary: Mapping[str, Any], dotted: str) -> float | None:
    value: Any = summary
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return _finite(value)


def check_targets(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{dotted key: {"value", "target", "met"}}`` for every entry of :data:`TARGETS` (a missing or undefined
    value does not meet its target)."""
    results = {}
    for key, (comparison, threshold) in TARGETS.items():
        value = _lookup(summary, key)
        met = value is not None and (value >= threshold if comparison == ">=" else value <= threshold)
        results[key] = {"value": value, "target": f"{comparison} {threshold}", "met": bool(met)}
    return results


def build_learning_summary(
    pretrain_metrics: Mapping[str, Any],
    seg_dice: Mapping[str, Mapping[str, Any]],
    cls_metrics: Mapping[str, Any],
    seconds: Mapping[str, float],
    seg_cases: int | None = None,
) -> dict[str, Any]:
    """The summary of one end-to-end run.

    Args:
        pretrain_metrics: the pre-training evaluation report (``reconstruction_mse_ratio``, ``templates_r``).
        seg_dice: ``{"all_modalities": {region: mean Dice}, "missing": {fill: {modality: {region: mean Dice}}}}``
            over the held-out cases (regions ``tc``, ``wt``, ``et`` in any case), each modality of
            :data:`TEMPLATE_MODALITIES` removed in turn and filled as each of :data:`MISSING_FILLS` says.
        cls_metrics: the classification evaluation metrics (``accuracy``, ``balanced_accuracy``, ``auc``,
            ``num_cases``).
        seconds: wall time per stage; ``total`` is added when absent.
        seg_cases: number of held-out segmentation cases behind the means.

    Returns:
        A dictionary with the keys of :data:`SUMMARY_KEYS` (and ``seg_cases`` when given); ``targets`` holds
        :func:`check_targets`.

    Raises:
        KeyError: an input lacks a figure the summary needs.
    """
    for run in ("all_modalities", "missing"):
        if run not in seg_dice:
            raise KeyError(f"segmentation Dice lacks the {run!r} run; it has {sorted(seg_dice)}")
    missing_runs = {
        fill: {m: seg_dice["missing"].get(fill, {}).get(m) for m in TEMPLATE_MODALITIES} for fill in MISSING_FILLS
    }
    absent = [f"{fill}/{m}" for fill, runs in missing_runs.items() for m, dice in runs.items() if dice is None]
    if absent:
        raise KeyError(f"segmentation Dice lacks the missing-modality run(s) {absent}")
    if "reconstruction_mse_ratio" not in pretrain_metrics or "templates_r" not in pretrain_metrics:
        raise KeyError("the pre-training report needs 'reconstruction_mse_ratio' and 'templates_r'")
    missing = [m for m in CLS_METRICS if m not in cls_metrics]
    if missing:
        raise KeyError(f"classification metrics lack {missing}")
    templates_r = pretrain_metrics["templates_r"]
    seconds = {str(k): float(v) for k, v in seconds.items()}
    seconds.setdefault("total", sum(seconds.values()))
    summary: dict[str, Any] = {
        "seg_dice_all": _regions(seg_dice["all_modalities"], "all_modalities"),
        "seg_dice_missing": {m: _regions(d, f"templates/{m}") for m, d in missing_runs["templates"].items()},
        "seg_dice_missing_baselines": {
            fill: {m: _regions(d, f"{fill}/{m}") for m, d in runs.items()}
            for fill, runs in missing_runs.items()
            if fill != "templates"
        },
        "cls": {
            **{m: _finite(cls_metrics[m]) for m in CLS_METRICS},
            "num_cases": int(cls_metrics.get("num_cases", 0)),
        },
        "templates_r": {m: _finite(templates_r.get(m)) for m in TEMPLATE_MODALITIES},
        "reconstruction_mse_ratio": _finite(pretrain_metrics["reconstruction_mse_ratio"]),
        "seconds": seconds,
    }
    if seg_cases is not None:
        summary["seg_cases"] = int(seg_cases)
    summary["targets"] = check_targets(summary)
    return summary


def summary_table(summary: Mapping[str, Any]) -> str:
    """The targets of a summary as a text table (figure, value, target, met), then the stage times."""
    rows = [("figure", "value", "target", "met")]
    for key, result in summary["targets"].items():
        value = "n/a" if result["value"] is None else f"{result['value']:.3f}"
        rows.append((key, value, result["target"], "yes" if result["met"] else "NO"))
    figures = {f"seg_dice_all.{r}": summary["seg_dice_all"][r] for r in REGIONS}
    for m in TEMPLATE_MODALITIES:
        figures.update({f"seg_dice_missing.{m}.{r}": summary["seg_dice_missing"][m][r] for r in REGIONS})
    for key, value in figures.items():
        if key not in summary["targets"]:
            rows.append((key, "n/a" if value is None else f"{value:.3f}", "", ""))
    accuracy = summary["cls"].get("accuracy")
    rows.append(("cls.accuracy", "n/a" if accuracy is None else f"{accuracy:.3f}", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    met = sum(r["met"] for r in summary["targets"].values())
    lines.append(f"{met} of {len(summary['targets'])} targets met")
    lines.append("WT with a modality missing, filled with templates / zeros / the case's mean:")
    for m in TEMPLATE_MODALITIES:
        wt = [summary["seg_dice_missing"][m]["wt"]]
        wt += [summary["seg_dice_missing_baselines"][f][m]["wt"] for f in MISSING_FILLS[1:]]
        lines.append(f"  no {m:<6}" + " / ".join("n/a" if v is None else f"{v:.3f}" for v in wt))
    lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()))
    return "\n".join(lines)


def _seed_figures() -> list[str]:
    """The figures of :func:`seeds_table`, in order: every target's, then the reported ones beside them."""
    figures = list(TARGETS)
    figures += [f"seg_dice_missing.{m}.{r}" for m in TEMPLATE_MODALITIES for r in REGIONS]
    figures += [f"seg_dice_missing_baselines.{f}.{m}.wt" for f in MISSING_FILLS[1:] for m in TEMPLATE_MODALITIES]
    figures += ["cls.accuracy", *(f"seconds.{stage}" for stage in ("cohorts", "pretrain", "segmentation",
                                                                      "classification"))]  # fmt: skip
    seen: set[str] = set()
    return [f for f in figures if not (f in seen or seen.add(f))]


def seeds_table(summaries: Mapping[int | str, Mapping[str, Any]]) -> str:
    """Markdown table of several runs' summaries (``{seed: summary}``): each figure at every seed, its mean and
    sample standard deviation, its target and at how many seeds the target is met."""
    import statistics

    seeds = list(summaries)
    header = ["figure", *(f"seed {s}" for s in seeds), "mean ± sd", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for figure in _seed_figures():
        values = [_lookup(summaries[s], figure) for s in seeds]
        if all(v is None for v in values):
            continue
        known = [v for v in values if v is not None]
        digits = 0 if figure.startswith("seconds") else 3
        spread = f" ± {statistics.stdev(known):.{digits}f}" if len(known) > 1 else ""
        cells = ["n/a" if v is None else f"{v:.{digits}f}" for v in values]
        target, met = "", ""
        if figure in TARGETS:
            comparison, threshold = TARGETS[figure]
            target = f"{comparison} {threshold:g}"
            hits = sum(v is not None and (v >= threshold if comparison == ">=" else v <= threshold) for v in values)
            met = f"{hits} of {len(values)}"
        lines.append(f"| `{figure}` | " + " | ".join(cells) + f" | {statistics.fmean(known):.{digits}f}{spread} | "
                     f"{target} | {met} |")  # fmt: skip
    return "\n".join(lines)
