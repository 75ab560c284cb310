"""Final exports when training completes.

- :class:`StateDictExportHandler` (generic): plain state dicts of modules (``models/model.pt``,
  ``models/encoder.pt``), written atomically and unwrapped from DDP.
- :class:`TemplateExportHandler`: the distilled modality templates as one NIfTI per modality plus a PNG montage.

In distributed runs attach them on rank 0 only (the bundles' ``multi_gpu_train.json`` does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ignite.engine import Engine
from torch import nn

from brainmvp_components.utils.misc import unwrap_module
from brainmvp_components.utils.writers import atomic_torch_save

__all__ = ["StateDictExportHandler", "TemplateExportHandler"]


from brainmvp_components.handlers.events import EventHandler


class StateDictExportHandler(EventHandler):
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


class TemplateExportHandler(EventHandler):
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
