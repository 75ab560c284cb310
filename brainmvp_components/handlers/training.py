"""Ignite handlers of the brainmvp bundles: final exports and pre-training previews.

- :class:`StateDictExportHandler` (generic): when training completes, write plain state dicts of modules
  (``models/model.pt``, ``models/encoder.pt``), atomically and unwrapped from DDP.
- :class:`TemplateExportHandler`: when pre-training completes, export the distilled modality templates as one
  NIfTI per modality plus a PNG montage.
- :class:`ReconstructionPreviewHandler`: every few epochs, render the pre-training views and reconstructions of
  the last batch and the template montage as PNG files, TensorBoard images and MLflow artifacts.
- :class:`TemplateEvolutionHandler`: snapshots of the templates from initialisation to the end, as one montage.
- :class:`TrainingCurvesHandler` (generic): per-epoch losses and validation metrics as JSON and a PNG plot.

In distributed runs attach them on rank 0 only (the bundles' ``multi_gpu_train.json`` does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from brainmvp_components.data.modalities import CANONICAL_MODALITIES
from brainmvp_components.utils.misc import unwrap_module
from brainmvp_components.utils.writers import atomic_torch_save

__all__ = [
    "LastEpochValidationHandler",
    "ReconstructionPreviewHandler",
    "StateDictExportHandler",
    "TemplateEvolutionHandler",
    "TemplateExportHandler",
    "TrainingCurvesHandler",
    "loss_terms",
    "mlflow_runs",
]


def _event(name: str):
    try:
        return Events[name.upper()]
    except KeyError as err:
        raise ValueError(f"unknown ignite event {name!r}; use e.g. 'completed' or 'epoch_completed'") from err


class _EventHandler:
    """Base of handlers called on one ignite event (an event name such as ``"completed"``), logging to the
    engine's logger unless ``name`` names another."""

    def __init__(self, event: str, name: str | None) -> None:
        self.event = _event(event)
        self._name = name
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(self.event, self)


class StateDictExportHandler(_EventHandler):
    """Write the plain state dict of each module to ``output_dir/<file name>`` when the engine completes.

    The files are what downstream code loads with ``module.load_state_dict(torch.load(path))`` (the MONAI
    bundle convention for ``models/model.pt``); DDP/DataParallel wrappers are unwrapped, and each file is written
    to a temporary name and renamed into place.

    Args:
        output_dir: destination folder (created when needed).
        modules: ``{file name: module}``, e.g. ``{"model.pt": network, "encoder.pt": network.encoder}``.
        event: ignite event name that triggers the export (default ``"completed"``).
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        modules: Mapping[str, nn.Module],
        event: str = "completed",
        name: str | None = None,
    ) -> None:
        if not modules:
            raise ValueError("modules must map at least one file name to a module")
        for file_name, module in modules.items():
            if not hasattr(module, "state_dict"):
                raise TypeError(f"{file_name!r}: {type(module).__name__} has no state_dict")
        super().__init__(event, name)
        self.output_dir = Path(output_dir)
        self.modules = dict(modules)

    def __call__(self, engine: Engine | None = None) -> list[Path]:
        paths = []
        for file_name, module in self.modules.items():
            state = {k: v.detach().cpu() for k, v in unwrap_module(module).state_dict().items()}
            paths.append(atomic_torch_save(state, self.output_dir / file_name))
        self.logger.info(f"exported {', '.join(str(p) for p in paths)}")
        return paths


class TemplateExportHandler(_EventHandler):
    """Export the distilled modality templates when the engine completes.

    Writes ``output_dir/template_<modality>.nii.gz`` for every template (each file atomically, on the templates'
    own atlas grid and affine) and the montage ``output_dir/templates.png``
    (:meth:`~brainmvp_components.networks.templates.ModalityTemplates.export_nifti`).

    Args:
        templates: a :class:`~brainmvp_components.networks.templates.ModalityTemplates`, or a module holding one as
            ``.templates`` (the pre-training model, DDP-wrapped or not).
        output_dir: destination folder, conventionally ``models/templates``.
        event: ignite event name that triggers the export (default ``"completed"``).
        name: logger name; default the engine's logger.
    """

    def __init__(
        self, templates: nn.Module, output_dir: str | os.PathLike, event: str = "completed", name: str | None = None
    ) -> None:
        templates = unwrap_module(templates)
        templates = getattr(templates, "templates", templates)
        if not hasattr(templates, "export_nifti"):
            raise TypeError(f"expected ModalityTemplates or a model holding .templates, got {type(templates).__name__}")
        super().__init__(event, name)
        self.templates = templates
        self.output_dir = Path(output_dir)

    def __call__(self, engine: Engine | None = None) -> list[Path]:
        paths = self.templates.export_nifti(self.output_dir)
        self.logger.info(f"exported {len(paths)} modality templates to {self.output_dir}")
        return paths


def mlflow_runs(engine: Engine) -> list[tuple[Any, str]]:
    """``(client, run_id)`` of the MLflow runs logging this engine.

    These are the open runs of MONAI ``MLFlowHandler``s attached to ``engine`` (what ``--tracking mlflow``
    adds), or else the active run of MLflow's fluent API; ``[]`` when there is none or MLflow is not installed.
    """
    try:
        import mlflow
    except ImportError:
        return []
    from monai.handlers import MLFlowHandler

    runs, seen = [], set()
    for handlers in engine._event_handlers.values():
        for handler, *_ in handlers:
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, MLFlowHandler) and owner.cur_run is not None:
                run_id = owner.cur_run.info.run_id
                if run_id not in seen:
                    seen.add(run_id)
                    runs.append((owner.client, run_id))
    active = mlflow.active_run()
    if not runs and active is not None:
        runs.append((mlflow.MlflowClient(), active.info.run_id))
    return runs


class ReconstructionPreviewHandler:
    """Every ``interval`` epochs, show what pre-training does: views, reconstructions and the templates.

    From the last batch of the epoch, the first case's first target is masked and filled as in training (same
    schedule: template fill for view B during the warm-up), both views are reconstructed in eval mode, and the
    middle axial and coronal slices of the original, view A (template fill), view B (cross-modal fill) and both
    reconstructions are drawn (:func:`brainmvp_components.visualize.previews.save_reconstruction_preview`), next to a
    montage of the templates (:func:`brainmvp_components.visualize.previews.save_template_montage`, the modalities with
    non-zero templates). The PNG files ``epoch_<N>_reconstruction.png`` and ``epoch_<N>_templates.png`` go to
    ``output_dir``; the same pictures are written to TensorBoard (``add_image``) and logged as artifacts
    (``previews/``) to the MLflow run when one is open.

    Needs a :class:`~brainmvp_components.engines.pretrain.BrainMVPPretrainTrainer`.

    Args:
        output_dir: folder of the PNG files (created when needed).
        interval: epochs between previews.
        log_dir: TensorBoard folder; ``None`` writes no TensorBoard images unless ``summary_writer`` is given.
        summary_writer: an existing ``SummaryWriter`` to use instead of creating one in ``log_dir``.
        mlflow: log the PNG files to the open MLflow run, if any.
        seed: seed of the preview masks.
        tag: TensorBoard tag prefix.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        interval: int = 1,
        log_dir: str | os.PathLike | None = None,
        summary_writer: Any | None = None,
        mlflow: bool = True,
        seed: int = 0,
        tag: str = "preview",
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be a positive number of epochs, got {interval}")
        self.output_dir = Path(output_dir)
        self.interval = int(interval)
        self.log_dir = None if log_dir is None else str(log_dir)
        self._writer = summary_writer
        self._own_writer = False
        self.mlflow = mlflow
        self.seed = int(seed)
        self.tag = tag
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self.close)

    @property
    def writer(self):
        if self._writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
            self._own_writer = True
        return self._writer

    def close(self, engine: Engine | None = None) -> None:
        if self._own_writer and self._writer is not None:
            self._writer.close()
            self._writer, self._own_writer = None, False

    @torch.no_grad()
    def panels(self, engine: Engine) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(reconstruction panels, template volumes)`` for the engine's current batch."""
        from brainmvp_components.engines.pretrain import compute_pretrain_losses

        images, modality_index, partner, affine = engine.prepare_pretrain_batch(engine.state.batch)
        network = unwrap_module(engine.network)
        schedule = {**engine.schedule(engine.state.epoch), "contrastive_loss": None}
        was_training = network.training
        network.eval()
        try:
            out = compute_pretrain_losses(
                network,
                images[:1],
                modality_index[:1],
                partner[:1],
                affine[:1],
                generator=torch.Generator().manual_seed(self.seed),
                **engine.loss_kwargs(),
                **schedule,
            )
        finally:
            network.train(was_training)
        target_name = CANONICAL_MODALITIES[int(modality_index[0, 0])]
        k = int(partner[0, 0])
        fill_b = (
            "template" if schedule["template_for_partner"] or k < 0 else CANONICAL_MODALITIES[int(modality_index[0, k])]
        )

        def volume(key: str) -> np.ndarray:
            return out[key][0, 0].float().cpu().numpy()

        kwargs = engine.loss_kwargs()
        if kwargs.get("objective", "brainmvp") == "mae":  # the baseline has one view
            return {
                f"original ({target_name})": volume("target"),
                f"masked view ({kwargs.get('mae_fill', 'zeros')} fill)": volume("view_a"),
                "reconstruction": volume("rec_a"),
            }, network.templates.as_arrays()
        from brainmvp_components.visualize.previews import reconstruction_panels

        panels = reconstruction_panels(volume, target_name, fill_b)
        arrays = network.templates.as_arrays()
        trained = {name: array for name, array in arrays.items() if np.any(array)}
        return panels, trained or arrays

    def __call__(self, engine: Engine) -> list[Path]:
        from brainmvp_components.visualize.previews import save_reconstruction_preview, save_template_montage

        if engine.state.batch is None:
            return []
        epoch = engine.state.epoch
        panels, templates = self.panels(engine)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rec_path = self.output_dir / f"epoch_{epoch:04d}_reconstruction.png"
        tpl_path = self.output_dir / f"epoch_{epoch:04d}_templates.png"
        save_reconstruction_preview(panels, rec_path, title=f"pre-training, epoch {epoch}")
        save_template_montage(templates, tpl_path)
        paths = [rec_path, tpl_path]
        writer = self.writer
        if writer is not None:
            import matplotlib.image

            for name, path in zip(("reconstruction", "templates"), paths):
                picture = matplotlib.image.imread(str(path))[..., :3]
                writer.add_image(f"{self.tag}/{name}", picture, epoch, dataformats="HWC")
            writer.flush()
        if self.mlflow:
            for client, run_id in mlflow_runs(engine):
                for path in paths:
                    client.log_artifact(run_id, str(path), artifact_path="previews")
        self.logger.info(f"wrote pre-training previews {rec_path.name}, {tpl_path.name} to {self.output_dir}")
        return paths


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


class TemplateEvolutionHandler:
    """The distilled templates from initialisation to the end of pre-training, as one montage.

    At the start of training and every ``interval`` epochs, the axial slice through the middle of each template
    is recorded in ``output_dir/template_evolution.npz`` (rewritten atomically at each snapshot, so a killed run
    resumes its snapshots); when training completes, ``template_evolution.png`` (one row per modality, one
    column per snapshot, :func:`brainmvp_components.visualize.previews.save_template_evolution`) is drawn from them.
    Modalities whose template is still all zero at the end (no training case had them) are left out.

    Args:
        templates: a :class:`~brainmvp_components.networks.templates.ModalityTemplates`, or a module holding one as
            ``.templates`` (the pre-training model, wrapped or not).
        output_dir: folder of the files.
        interval: epochs between snapshots.
        max_columns: at most this many snapshots are drawn (evenly chosen, the first and the last always).
    """

    def __init__(
        self, templates: nn.Module, output_dir: str | os.PathLike, interval: int = 1, max_columns: int = 8
    ) -> None:
        templates = unwrap_module(templates)
        self.templates = getattr(templates, "templates", templates)
        if not hasattr(self.templates, "as_arrays"):
            raise TypeError(f"expected ModalityTemplates or a model holding .templates, got {type(templates).__name__}")
        if int(interval) < 1 or int(max_columns) < 2:
            raise ValueError(f"need interval >= 1 and max_columns >= 2, got {interval} and {max_columns}")
        self.output_dir = Path(output_dir)
        self.interval = int(interval)
        self.max_columns = int(max_columns)
        self.epochs: list[int] = []
        self.slices: dict[str, list[np.ndarray]] = {}

    @property
    def npz_path(self) -> Path:
        return self.output_dir / "template_evolution.npz"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self._snapshot)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.epochs, self.slices = [], {}
        start = engine.state.epoch
        if start > 0 and self.npz_path.is_file():
            with np.load(self.npz_path) as saved:
                keep = [i for i, e in enumerate(saved["epochs"].tolist()) if e <= start]
                self.epochs = [int(saved["epochs"][i]) for i in keep]
                self.slices = {k: [saved[k][i] for i in keep] for k in saved.files if k != "epochs"}
        if not self.epochs or self.epochs[-1] != start:
            self._snapshot(engine)

    @torch.no_grad()
    def _snapshot(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if self.epochs and self.epochs[-1] == epoch:
            return
        self.epochs.append(epoch)
        for name, volume in self.templates.as_arrays().items():
            self.slices.setdefault(name, []).append(volume[:, :, volume.shape[2] // 2].copy())
        self._write_snapshots()

    def _write_snapshots(self) -> None:
        """The snapshots so far, atomically: a killed run resumes them."""
        from brainmvp_components.utils.writers import atomic_write

        self.output_dir.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.stack(slices) for name, slices in self.slices.items()}
        atomic_write(
            self.npz_path, lambda tmp: np.savez_compressed(tmp, epochs=np.asarray(self.epochs), **arrays), ".npz"
        )

    def _completed(self, engine: Engine) -> Path | None:
        from brainmvp_components.visualize.previews import save_template_evolution

        self._snapshot(engine)
        trained = {name: slices for name, slices in self.slices.items() if np.any(slices[-1])}
        if not trained:
            return None
        count = len(self.epochs)
        columns = sorted({int(round(i)) for i in np.linspace(0, count - 1, min(count, self.max_columns))})
        path = save_template_evolution(
            {name: [slices[i] for i in columns] for name, slices in trained.items()},
            [self.epochs[i] for i in columns],
            self.output_dir / "template_evolution.png",
        )
        logging.getLogger(__name__).info("wrote the template evolution montage %s", path)
        return path
