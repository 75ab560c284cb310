"""Pre-training previews while it runs.

- :class:`ReconstructionPreviewHandler`: every few epochs, the pre-training views and reconstructions of the last
  batch and the template montage as PNG files, TensorBoard images and MLflow artifacts.
- :class:`TemplateEvolutionHandler`: snapshots of the templates from initialisation to the end, as one montage.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from brainmvp_components.data.modalities import CANONICAL_MODALITIES
from brainmvp_components.utils.misc import unwrap_module

__all__ = ["ReconstructionPreviewHandler", "TemplateEvolutionHandler", "mlflow_runs"]


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
