"""Training progress: per-epoch curves as JSON and a PNG plot, and a last validation when the interval skips
the final epoch."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["LastEpochValidationHandler", "TrainingCurvesHandler", "loss_terms"]


class LastEpochValidationHandler:
    """Validate after the last training epoch when the validation interval skips it.

    MONAI's ``ValidationHandler`` validates every ``interval`` epochs, so a run whose length is not a multiple of
    the interval ends with unvalidated epochs, and a run shorter than the interval (a MONAI Label training request
    for fewer epochs than ``val_interval``) never validates and never saves a model. Listed after the
    ``ValidationHandler`` in ``train#handlers`` with the same validator and interval, this runs the validator once
    more when the last epoch completes, unless that epoch was just validated.

    Args:
        validator: the validation evaluator.
        interval: the ``ValidationHandler``'s interval in epochs.
    """

    def __init__(self, validator: Engine, interval: int) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be a positive number of epochs, got {interval}")
        self.validator = validator
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch, last = engine.state.epoch, engine.state.max_epochs
        if last is not None and epoch == last and epoch % self.interval != 0:
            self.validator.run(epoch)


def _scalar(value: Any) -> float | None:
    """A finite float from a number or a one-element tensor, else ``None``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        value = float(value)
        return value if np.isfinite(value) else None
    return None


def loss_terms(*keys: str) -> Callable[[Any], dict[str, Any]]:
    """An ``output_transform`` giving ``{key: value}`` for the ``keys`` present in a trainer's output (a
    dictionary, or MONAI's decollated list of them), e.g. ``loss_terms("loss", "task_loss", "consistency_loss")``
    for :class:`TrainingCurvesHandler`."""

    def transform(output: Any) -> dict[str, Any]:
        item = output[0] if isinstance(output, (list, tuple)) and output else output
        return {key: item[key] for key in keys if isinstance(item, Mapping) and key in item}

    return transform


class TrainingCurvesHandler:
    """Training curves beside the TensorBoard logs: ``<name>.json`` and ``<name>.png`` in ``output_dir``.

    Attach it to the trainer; validation metrics are recorded too when it is also attached to the validation
    evaluator (the same instance in both handler lists) or, simpler, when the evaluator is given as ``validator``
    (then the trainer's handler list alone names it, and no list refers to an index of another). From the
    trainer it records, per epoch, the mean of ``output_transform(engine.state.output)`` over the epoch's
    iterations (a scalar, or a dictionary of scalars) and every scalar in ``engine.state.metrics``;
    from an evaluator, the scalar metrics of each validation run, at the trainer's epoch. The JSON is rewritten
    (atomically) after every epoch and validation; the PNG after every validation and when training completes
    (:func:`brainmvp_components.visualize.previews.save_training_curves`). A resumed run keeps the records of the
    epochs before its start.

    Args:
        output_dir: folder of the files (created when needed).
        output_transform: maps the trainer's ``state.output`` to a loss scalar or a ``{name: scalar}``;
            ``None`` records no per-iteration values.
        loss_name: the record name of a scalar ``output_transform`` result.
        name: file stem.
        title: plot title.
        validator: the validation evaluator, to attach to along with the trainer.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        output_transform: Callable[[Any], Any] | None = None,
        loss_name: str = "train_loss",
        name: str = "training_curves",
        title: str | None = None,
        validator: Engine | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_transform = output_transform
        self.loss_name = loss_name
        self.name = name
        self.title = title
        self.validator = validator
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"{self.name}.json"

    @property
    def png_path(self) -> Path:
        return self.output_dir / f"{self.name}.png"

    def attach(self, engine: Engine) -> None:
        from monai.engines import Evaluator

        if isinstance(engine, Evaluator):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._validation_completed)
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._write_plot)
        if self.validator is not None and not self.validator.has_event_handler(
            self._validation_completed, Events.EPOCH_COMPLETED
        ):
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._validation_completed)

    def _started(self, engine: Engine) -> None:
        """Keep the records of epochs before this run's start (a resumed run)."""
        import json

        start = engine.state.epoch
        if start > 0 and self.json_path.is_file():
            try:
                previous = json.loads(self.json_path.read_text())
            except ValueError:
                previous = []
            self.history = [r for r in previous if isinstance(r, dict) and r.get("epoch", start + 1) <= start]
        else:
            self.history = []

    def _reset(self, engine: Engine) -> None:
        self._sums, self._counts = {}, {}

    def _iteration_completed(self, engine: Engine) -> None:
        if self.output_transform is None:
            return
        values = self.output_transform(engine.state.output)
        if not isinstance(values, Mapping):
            values = {self.loss_name: values}
        for key, value in values.items():
            scalar = _scalar(value)
            if scalar is not None:  # a non-finite step is left out of its term's mean
                self._sums[key] = self._sums.get(key, 0.0) + scalar
                self._counts[key] = self._counts.get(key, 0) + 1

    def _epoch_completed(self, engine: Engine) -> None:
        record: dict[str, float] = {"epoch": engine.state.epoch}
        record.update({k: v / self._counts[k] for k, v in self._sums.items()})
        for key, value in engine.state.metrics.items():
            scalar = _scalar(value)
            if scalar is not None:
                record.setdefault(key, scalar)
        self.history.append(record)
        self._write_json()

    def _validation_completed(self, engine: Engine) -> None:
        record: dict[str, float] = {"epoch": engine.state.epoch}
        for key, value in engine.state.metrics.items():
            scalar = _scalar(value)
            if scalar is not None:
                record[key] = scalar
        self.history.append(record)
        self._write_json()
        self._write_plot()

    def _write_json(self) -> None:
        from brainmvp_components.utils.writers import write_json

        write_json(self.json_path, self.history)

    def _write_plot(self, engine: Engine | None = None) -> None:
        from brainmvp_components.visualize.previews import save_training_curves

        if any(len(record) > 1 for record in self.history):
            save_training_curves(self.history, self.png_path, title=self.title)
