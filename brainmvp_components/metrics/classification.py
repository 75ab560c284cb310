"""Classification metrics, class weights and per-case prediction reports.

Metrics follow the paper's classification tables (accuracy, AUC, F1) plus balanced accuracy and the confusion
matrix, computed with MONAI's metric functions (:func:`monai.metrics.compute_roc_auc`,
:func:`monai.metrics.get_confusion_matrix`, :func:`monai.metrics.compute_confusion_matrix_metric`):

- accuracy: fraction of cases whose most probable class is their label;
- balanced accuracy: mean over classes of the sensitivity (recall), robust to class imbalance;
- F1: of the positive class (label 1, e.g. AD) for two classes, the macro mean over classes otherwise;
- AUC: area under the ROC curve of the class probabilities, macro mean over classes (for two classes, the AUC
  of the positive class);
- confusion matrix: ``[true class][predicted class]`` counts.

:class:`ClassificationMetric` / :class:`ClassificationMetricHandler` accumulate them over an epoch for MONAI
evaluators; :class:`ClassificationReportWriter` writes per-case probabilities (and, with labels, the metrics)
to CSV and JSON for the evaluate and inference workflows.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import (
    CumulativeIterationMetric,
    compute_confusion_matrix_metric,
    compute_roc_auc,
    get_confusion_matrix,
)
from monai.utils import min_version, optional_import

from brainmvp_components.data.modalities import strip_nifti_suffix
from brainmvp_components.metrics.operating_point import (
    OPERATING_POINT_NAME,
    choose_threshold,
    load_threshold,
    save_operating_point,
)
from brainmvp_components.utils.writers import write_csv, write_json

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = [
    "METRIC_NAMES",
    "load_threshold",
    "predicted_classes",
    "split_selection_metric",
    "confusion_matrix",
    "classification_metrics",
    "class_weights",
    "ClassificationMetric",
    "ClassificationMetricHandler",
    "ClassificationReportWriter",
    "TRAINING_SETTINGS_NAME",
    "save_training_settings",
    "check_training_settings",
]

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1", "auc")
"""Scalar metrics reported by :func:`classification_metrics`."""


def split_selection_metric(metrics: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({name: metric}, {the other metrics})``: the metric that selects the best model (an evaluator's
    ``key_val_metric``) and the ones only reported (``additional_metrics``).

    Raises:
        ValueError: ``name`` is not one of the metrics (the message lists them).
    """
    if name not in metrics:
        raise ValueError(f"selection metric {name!r} is not one of the validation metrics {sorted(metrics)}")
    return {name: metrics[name]}, {k: v for k, v in metrics.items() if k != name}


def _label_indices(labels: torch.Tensor | Sequence[int], num_classes: int) -> torch.Tensor:
    """Class indices ``(N,)`` from indices ``(N,)``/``(N, 1)`` or one-hot ``(N, C)`` labels."""
    labels = torch.as_tensor(labels).as_subclass(torch.Tensor).detach().cpu()
    if labels.ndim == 2 and labels.shape[1] == num_classes and num_classes > 1:
        return labels.argmax(dim=1)
    labels = labels.reshape(-1)
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"labels must be class indices or one-hot vectors, got values {labels.tolist()[:10]}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {sorted(set(labels.tolist()))}")
    return labels


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``LongTensor (C, C)`` of counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def predicted_classes(probabilities: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """``(N,)`` class indices from ``(N, C)`` probabilities: the argmax, or with two classes and a ``threshold``
    (:mod:`~brainmvp_components.metrics.operating_point`), class 1 where its probability is at least that."""
    if threshold is None:
        return probabilities.argmax(dim=1)
    if probabilities.shape[1] != 2:
        raise ValueError(f"a decision threshold needs two classes, got {probabilities.shape[1]}")
    return (probabilities[:, 1] >= threshold).long()


def classification_metrics(
    probabilities: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    class_names: Sequence[str] | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, F1, AUC and the confusion matrix of a set of predictions.

    Args:
        probabilities: ``(N, C)`` class probabilities (or scores; the prediction is their argmax).
        labels: ``(N,)`` class indices or ``(N, C)`` one-hot labels.
        class_names: names of the ``C`` classes for the per-class entries, default ``"0"``, ``"1"``, ...
        threshold: two classes only: class 1 where its probability is at least this (see
            :func:`predicted_classes`); ``None``: the argmax. AUC does not depend on it.

    Returns:
        ``{"accuracy", "balanced_accuracy", "f1", "auc"}`` as floats (``nan`` when undefined, e.g. AUC with a
        single class present), ``"confusion_matrix"`` (``C x C`` nested list, rows = true class),
        ``"per_class"`` (``{name: {"sensitivity", "precision", "f1", "support"}}``) and ``"num_cases"``.
    """
    probabilities = torch.as_tensor(probabilities).as_subclass(torch.Tensor).detach().float().cpu()
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {tuple(probabilities.shape)}")
    num_cases, num_classes = probabilities.shape
    labels = _label_indices(labels, num_classes)
    if labels.numel() != num_cases:
        raise ValueError(f"{labels.numel()} labels for {num_cases} predictions")
    names = [str(c) for c in (class_names if class_names is not None else range(num_classes))]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names {names} for {num_classes} classes")
    if num_cases == 0:
        raise ValueError("no predictions to compute metrics on")

    predicted = predicted_classes(probabilities, threshold)
    eye = torch.eye(num_classes)
    per_class_counts = get_confusion_matrix(eye[predicted], eye[labels]).sum(dim=0)  # (C, 4): tp, fp, tn, fn
    sensitivity = compute_confusion_matrix_metric("sensitivity", per_class_counts)
    precision = compute_confusion_matrix_metric("precision", per_class_counts)
    f1 = compute_confusion_matrix_metric("f1 score", per_class_counts)
    support = torch.bincount(labels, minlength=num_classes)
    present = support > 0
    matrix = confusion_matrix(predicted, labels, num_classes)
    if bool(present.all()):
        auc = float(compute_roc_auc(probabilities, eye[labels], average="macro"))
    else:
        auc = float("nan")  # AUC needs positive and negative cases of every class
    return {
        "num_cases": int(num_cases),
        "accuracy": float(matrix.trace()) / num_cases,
        "balanced_accuracy": float(sensitivity[present].mean()),
        "f1": float(f1[1]) if num_classes == 2 else float(f1.nanmean()),
        "auc": auc,
        "confusion_matrix": matrix.tolist(),
        "per_class": {
            name: {
                "sensitivity": float(sensitivity[c]),
                "precision": float(precision[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(names)
        },
    }


def class_weights(
    weights: Sequence[float] | str | None, data: Sequence[dict], num_classes: int, device: Any = None
) -> torch.Tensor | None:
    """Class weights for ``torch.nn.CrossEntropyLoss(weight=...)``.

    Args:
        weights: ``None`` (unweighted), explicit per-class weights, or ``"balanced"``: ``N / (C * n_c)`` from the
            label counts ``n_c`` of ``data``, so every class contributes equally to the loss.
        data: datalist entries with an integer ``label`` (used by ``"balanced"``).
        num_classes: ``C``.
        device: device of the returned tensor.
    """
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights != "balanced":
            raise ValueError(
                f"class weights must be None, a list of {num_classes} numbers or 'balanced', got {weights!r}"
            )
        labels = _label_indices([int(entry["label"]) for entry in data], num_classes)
        counts = torch.bincount(labels, minlength=num_classes).float()
        if (counts == 0).any():
            raise ValueError(
                f"'balanced' class weights need every class in the training data; counts {counts.tolist()}"
            )
        result = counts.sum() / (num_classes * counts)
    else:
        result = torch.as_tensor([float(w) for w in weights])
        if result.numel() != num_classes or (result <= 0).any():
            raise ValueError(f"need {num_classes} positive class weights, got {list(weights)}")
    logger.info("cross-entropy class weights: %s", [round(w, 4) for w in result.tolist()])
    return result.to(device)


class ClassificationMetric(CumulativeIterationMetric):
    """Accumulate class probabilities and labels over an epoch; aggregate one of :data:`METRIC_NAMES`.

    Args:
        metric_name: ``"accuracy"``, ``"balanced_accuracy"``, ``"f1"`` or ``"auc"``.

    ``y_pred``: ``(B, C)`` probabilities (or one-hot predictions); ``y``: ``(B,)`` indices or ``(B, C)`` one-hot
    labels, batch-first tensors or lists of per-case tensors. Across distributed ranks the buffers are gathered
    before aggregation (:meth:`~monai.metrics.Cumulative.get_buffer`).
    """

    def __init__(self, metric_name: str = "accuracy") -> None:
        super().__init__()
        if metric_name not in METRIC_NAMES:
            raise ValueError(f"unknown classification metric {metric_name!r}; choose one of {METRIC_NAMES}")
        self.metric_name = metric_name

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None):  # type: ignore[override]
        if y is None:
            raise ValueError(f"{type(self).__name__} needs labels")
        y_pred = y_pred.as_subclass(torch.Tensor).float().reshape(y_pred.shape[0], -1)
        return y_pred, _label_indices(y, y_pred.shape[1]).to(y_pred.device)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        y_pred, y = self.get_buffer()
        return torch.tensor(classification_metrics(y_pred, y)[self.metric_name])


class ClassificationMetricHandler(IgniteMetricHandler):
    """Ignite handler of one :class:`ClassificationMetric`, for ``key_val_metric``/``additional_metrics``.

    Args:
        metric_name: one of :data:`METRIC_NAMES`.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
    """

    def __init__(self, metric_name: str = "accuracy", output_transform: Callable = lambda x: x) -> None:
        super().__init__(
            metric_fn=ClassificationMetric(metric_name), output_transform=output_transform, save_details=False
        )


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by ``None`` so the JSON is standard."""
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class ClassificationReportWriter:
    """Collect each case's class probabilities during an evaluator run; write them (and metrics) when it ends.

    Files, each written atomically (temporary file, then rename) in ``output_dir``:

    - ``<prefix>predictions.csv``: ``case, prob_<class>..., predicted_label, prediction[, label, label_name]``;
    - ``<prefix>predictions.json``: ``{"class_names", "cases": [{"case", "probabilities": {class: p},
      "predicted_label", "prediction"[, "label", "label_name"]}]}``;
    - when every case has a label: ``<prefix>metrics.json`` (:func:`classification_metrics`) and
      ``<prefix>metrics.csv`` (``metric, value`` rows; confusion matrix cells as ``confusion_<true>_<predicted>``).

    Args:
        output_dir: folder of the files (created when missing).
        class_names: class names in label order (``metadata.json``'s ``channel_def`` order).
        pred_key: key of the ``(C,)`` class probabilities in the post-processed ``engine.state.output``.
        label_key: key of the label (index or one-hot) in the output or batch; absent or ``None`` at inference.
        case_key: key of the case name in the batch; without it the name comes from the image's file name.
        prefix: file name prefix.
        keep_existing: keep the cases of an existing ``<prefix>predictions.json`` that this run did not predict
            (a resumed inference run skips them), so the files list every case predicted so far.
        threshold: two classes only: the operating point (class 1 where its probability is at least this);
            ``None``: the class of larger probability.
        operating_point_dir: when given and every case is labelled, choose the operating point on this run's
            cases (:func:`~brainmvp_components.metrics.operating_point.choose_threshold`) and write it there as
            ``operating_point.json`` (the classification bundle's ``calibrate.json`` runs on the validation split).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        pred_key: str = "pred",
        label_key: str = "label",
        case_key: str = "case",
        prefix: str = "",
        keep_existing: bool = False,
        threshold: float | None = None,
        operating_point_dir: str | os.PathLike | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.operating_point_dir = operating_point_dir
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) < 2:
            raise ValueError(f"need at least two class names, got {self.class_names}")
        self.pred_key, self.label_key, self.case_key, self.prefix = pred_key, label_key, case_key, prefix
        self.keep_existing = keep_existing
        self._cases: list[str] = []
        self._probabilities: list[torch.Tensor] = []
        self._labels: list[int | None] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self._cases, self._probabilities, self._labels = [], [], []

    def _case(self, item: dict, output: dict) -> str:
        if item.get(self.case_key) is not None:
            return str(item[self.case_key])
        image = output.get("image", item.get("image"))
        meta = getattr(image, "meta", {}) or {}
        source = meta.get("filename_or_obj")
        if isinstance(source, (list, tuple)):
            source = source[0] if source else None
        return strip_nifti_suffix(source) if source else f"case_{len(self._cases):04d}"

    def collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict) or isinstance(output, dict):
            raise ValueError(
                "ClassificationReportWriter needs decollated engine data (an evaluator with decollate=True)"
            )
        for item, out in zip(batch, output):
            probabilities = torch.as_tensor(out[self.pred_key]).as_subclass(torch.Tensor).detach().float().cpu()
            if probabilities.numel() != len(self.class_names):
                raise ValueError(
                    f"case {self._case(item, out)!r}: {probabilities.numel()} class probabilities for the "
                    f"{len(self.class_names)} classes {self.class_names}"
                )
            label = out.get(self.label_key, item.get(self.label_key))
            if label is not None:
                label = int(_label_indices(torch.as_tensor(label).reshape(1, -1), len(self.class_names))[0])
            self._cases.append(self._case(item, out))
            self._probabilities.append(probabilities.reshape(-1))
            self._labels.append(label)

    def rows(self) -> list[dict]:
        """One dictionary per collected case (the CSV rows)."""
        rows = []
        for case, probabilities, label in zip(self._cases, self._probabilities, self._labels):
            predicted = int(predicted_classes(probabilities.reshape(1, -1), self.threshold)[0])
            row: dict[str, Any] = {"case": case}
            row.update({f"prob_{name}": float(p) for name, p in zip(self.class_names, probabilities.tolist())})
            row.update({"predicted_label": predicted, "prediction": self.class_names[predicted]})
            if label is not None:
                row.update({"label": label, "label_name": self.class_names[label]})
            rows.append(row)
        return rows

    def _merge_existing(self) -> None:
        """Prepend the cases of an existing predictions JSON that were not predicted in this run."""
        import json

        path = self.output_dir / f"{self.prefix}predictions.json"
        if not path.is_file():
            return
        try:
            cases = json.loads(path.read_text()).get("cases", [])
        except (OSError, ValueError) as err:
            logger.warning("cannot read the existing predictions %s (%s); they are replaced", path, err)
            return
        kept = [c for c in cases if isinstance(c, dict) and str(c.get("case")) not in set(self._cases)]
        for case in kept:
            probabilities = case.get("probabilities", {})
            if sorted(probabilities) != sorted(self.class_names):
                logger.warning(
                    "%s: case %r has other classes than %s; dropped", path, case.get("case"), self.class_names
                )
                continue
            self._cases.insert(0, str(case["case"]))
            self._probabilities.insert(0, torch.tensor([float(probabilities[n]) for n in self.class_names]))
            self._labels.insert(0, case.get("label"))
        if kept:
            logger.info("kept %d case(s) predicted earlier from %s", len(kept), path)

    def write(self, engine: Engine | None = None) -> dict[str, Path]:
        """Write the files for the cases collected so far; returns their paths by kind."""
        if self.keep_existing:
            self._merge_existing()
        rows = self.rows()
        labelled = bool(rows) and all(label is not None for label in self._labels)
        columns = ["case", *(f"prob_{n}" for n in self.class_names), "predicted_label", "prediction"]
        columns += ["label", "label_name"] if labelled else []
        paths = {
            "predictions_csv": self.output_dir / f"{self.prefix}predictions.csv",
            "predictions_json": self.output_dir / f"{self.prefix}predictions.json",
        }
        write_csv(paths["predictions_csv"], rows, columns)
        cases = [
            {
                "case": row["case"],
                "probabilities": {n: row[f"prob_{n}"] for n in self.class_names},
                **{k: row[k] for k in ("predicted_label", "prediction", "label", "label_name") if k in row},
            }
            for row in rows
        ]
        document = {"class_names": self.class_names, "cases": cases}
        write_json(paths["predictions_json"], document)
        if labelled:
            if self.operating_point_dir is not None and (operating_point := self._save_operating_point()):
                paths["operating_point"] = operating_point
            metrics = classification_metrics(
                torch.stack(self._probabilities), self._labels, self.class_names, threshold=self.threshold
            )
            if self.threshold is not None:
                metrics["threshold"] = self.threshold
            paths["metrics_json"] = self.output_dir / f"{self.prefix}metrics.json"
            paths["metrics_csv"] = self.output_dir / f"{self.prefix}metrics.csv"
            write_json(paths["metrics_json"], _json_safe(metrics))
            scalar_rows = [{"metric": "num_cases", "value": metrics["num_cases"]}]
            scalar_rows += [{"metric": name, "value": metrics[name]} for name in METRIC_NAMES]
            scalar_rows += [
                {"metric": f"confusion_{self.class_names[t]}_{self.class_names[p]}", "value": count}
                for t, counts in enumerate(metrics["confusion_matrix"])
                for p, count in enumerate(counts)
            ]
            write_csv(paths["metrics_csv"], scalar_rows, ["metric", "value"])
            logger.info(
                "%d case(s): %s",
                metrics["num_cases"],
                ", ".join(f"{name} {metrics[name]:.4f}" for name in METRIC_NAMES),
            )
        logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
        return paths

    def _save_operating_point(self) -> Path | None:
        if len(self.class_names) != 2:
            raise ValueError(f"an operating point needs two classes, got {self.class_names}")
        scores = [float(p[1]) for p in self._probabilities]
        labels = [int(label) for label in self._labels]
        if len(set(labels)) < 2:
            logger.warning(
                "no operating point: the %d case(s) written to %s are all of one class; decisions stay by the "
                "larger probability (calibrate on a split with both classes)",
                len(labels),
                self.output_dir,
            )
            (Path(self.operating_point_dir) / OPERATING_POINT_NAME).unlink(missing_ok=True)  # an older model's
            return None
        threshold, balanced = choose_threshold(scores, labels)
        logger.info("operating point %.4f: balanced accuracy %.4f on %d case(s)", threshold, balanced, len(scores))
        return save_operating_point(self.operating_point_dir, threshold, positive_class=self.class_names[1],
                                    balanced_accuracy=balanced, cases=len(scores))  # fmt: skip


TRAINING_SETTINGS_NAME = "training_settings.json"
"""File beside ``model.pt`` holding the input settings the model was trained with."""


def save_training_settings(ckpt_dir: str | os.PathLike, **settings: Any) -> Path:
    """Store the input settings of a training run (``roi_size``, ``spacing``, ``input_modalities``...) beside the
    model, as ``<ckpt_dir>/training_settings.json`` (atomically), for :func:`check_training_settings` at inference.
    Values are stored as JSON (tuples as lists). Returns the path."""
    path = Path(ckpt_dir) / TRAINING_SETTINGS_NAME
    return write_json(path, {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})


def check_training_settings(ckpt_dir: str | os.PathLike, **settings: Any) -> list[str]:
    """Warn for each inference setting that differs from the one the model was trained with.

    Compares ``settings`` with ``<ckpt_dir>/training_settings.json`` (written by :func:`save_training_settings`);
    a setting absent from either side is not compared, and a model without the file gets one note. Returns the
    names of the differing settings.
    """
    import json

    path = Path(ckpt_dir) / TRAINING_SETTINGS_NAME
    if not path.is_file():
        logger.info("no %s beside the model: the inference settings cannot be checked against training", path)
        return []
    trained = json.loads(path.read_text())
    differing = []
    for name, value in settings.items():
        value = list(value) if isinstance(value, tuple) else value
        if name in trained and trained[name] != value:
            differing.append(name)
            logger.warning(
                "%s %s differs from the %s the model was trained with (%s): the predictions may be unreliable; "
                "pass --%s '%s' to match training",
                name,
                json.dumps(value),
                json.dumps(trained[name]),
                path,
                name,
                json.dumps(trained[name]),
            )
    return differing
