"""Ignite handlers of the brainmvp bundles: final exports and pre-training previews.

- :class:`StateDictExportHandler` (generic): when training completes, write plain state dicts of modules
  (``models/model.pt``, ``models/encoder.pt``), atomically and unwrapped from DDP.
- :class:`TemplateExportHandler`: when pre-training completes, export the distilled modality templates as one
  NIfTI per modality plus a PNG montage.
- :class:`ReconstructionPreviewHandler`: every few epochs, render the pre-training views and reconstructions of
  the last batch and the template montage as PNG files, TensorBoard images and MLflow artifacts.

In distributed runs attach them on rank 0 only (the bundles' ``multi_gpu_train.json`` does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from brainmvp_components.checkpoints import atomic_torch_save, unwrap_module
from brainmvp_components.modalities import CANONICAL_MODALITIES

__all__ = [
    "ReconstructionPreviewHandler",
    "StateDictExportHandler",
    "TemplateExportHandler",
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
    (:meth:`~brainmvp_components.templates.ModalityTemplates.export_nifti`).

    Args:
        templates: a :class:`~brainmvp_components.templates.ModalityTemplates`, or a module holding one as
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
    reconstructions are drawn (:func:`brainmvp_components.visualisation.save_reconstruction_preview`), next to a
    montage of the templates (:func:`brainmvp_components.visualisation.save_template_montage`, the modalities with
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

        panels = {
            f"original ({target_name})": volume("target"),
            f"view A (template {target_name})": volume("view_a"),
            f"view B ({fill_b} fill)": volume("view_b"),
            "reconstruction A": volume("rec_a"),
            "reconstruction B": volume("rec_b"),
        }
        arrays = network.templates.as_arrays()
        trained = {name: array for name, array in arrays.items() if np.any(array)}
        return panels, trained or arrays

    def __call__(self, engine: Engine) -> list[Path]:
        from brainmvp_components.visualisation import save_reconstruction_preview, save_template_montage

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
