"""The BrainMVP pre-training iteration as a MONAI/ignite trainer.

One iteration (Rui et al., "Multi-modal Vision Pre-training for Medical Image Analysis", CVPR 2025), for a batch
of ``B`` cases with ``K`` sampled single-modality crops each (:class:`~brainmvp_components.transforms.pretrain.
SampleModalitiesd`):

1. the ``B * K`` crops become the targets ``x_m``, each with its modality, its partner (a co-located crop of
   another modality of the same case) and its crop's voxel-to-world affine;
2. a random block mask (ratio ``r`` of ``8^3`` blocks) is drawn per target;
3. view A (modality-wise data distillation) fills the masked blocks with the learnable template of the target's
   modality cropped at the same physical location; view B (cross-modal reconstruction) fills them with the
   partner's voxels, or with the template during the template warm-up and for targets without a partner;
4. both views go through the network in one forward pass; ``L_MD = MSE(rec(A), x_m)`` and
   ``L_CMR = MSE(rec(B), x_m)`` over the whole crop, and from ``contrastive_start_epoch`` on a symmetric InfoNCE
   pairs the deepest features of the two views of each target (the other targets of the batch are negatives);
5. ``loss = md_weight * L_MD + cmr_weight * L_CMR + cl_weight * L_CL``.

``objective="mae"`` is the masked-image-modelling baseline of the same encoder and decoder (the paper's MAE3D
comparison): the same block mask, one view per target whose masked blocks are filled with zeros or with the mean
of the crop's visible voxels (``mae_fill``), and ``loss = L_MAE = MSE(rec(view), x_m)`` over the whole crop, as
``L_MD`` is. No template, no cross-modal fill and no contrastive term take part; ``loss_md``, ``loss_cmr`` and
``loss_cl`` are reported as 0. BrainMVP (``objective="brainmvp"``) is the default.

:func:`compute_pretrain_losses` is this computation as a pure function (used by the trainer, the preview
handler and benchmarks); :class:`BrainMVPPretrainTrainer` adds AMP, gradient accumulation, the epoch schedule
and the ignite events, in the form of MONAI's ``SupervisedTrainer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.engine import EventEnum
from ignite.metrics import Average
from monai.data import MetaTensor
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.inferers import Inferer, SimpleInferer
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from brainmvp_components.engines.accumulation import accumulation_state
from brainmvp_components.transforms.masking import fill_masked, random_block_mask
from brainmvp_components.utils.misc import unwrap_module

__all__ = ["LOSS_KEYS", "MAE_FILLS", "OBJECTIVES", "BrainMVPPretrainTrainer", "compute_pretrain_losses"]

LOSS_KEYS: tuple[str, ...] = ("loss", "loss_md", "loss_cmr", "loss_cl")
"""Scalar terms in the trainer's ``engine.state.output[0]`` (besides ``lr``); their epoch means go to
``state.metrics`` as ``train_<key>``."""

OBJECTIVES: tuple[str, ...] = ("brainmvp", "mae")
"""Pre-training objectives: BrainMVP (template and cross-modal fills, contrastive term) or the masked-image-modelling
baseline (one view, a constant fill, reconstruction only)."""

MAE_FILLS: tuple[str, ...] = ("zeros", "mean")
"""Fills of the masked blocks under ``objective="mae"``: zeros, or the mean of each crop's visible voxels."""


def _check_objective(objective: str, mae_fill: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown pre-training objective {objective!r}; choose one of {list(OBJECTIVES)}")
    if mae_fill not in MAE_FILLS:
        raise ValueError(f"unknown mae_fill {mae_fill!r}; choose one of {list(MAE_FILLS)}")


def _constant_fill(target: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """``(N, 1, 1, 1, 1)`` fill values of the MAE view: zeros, or the mean of each crop's visible voxels."""
    if mode == "zeros":
        return torch.zeros((target.shape[0], 1, 1, 1, 1), dtype=target.dtype, device=target.device)
    visible = (~mask).to(target.dtype)
    total = (target * visible).sum(dim=(1, 2, 3, 4), keepdim=True)
    return total / visible.sum(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1.0)


def compute_pretrain_losses(
    network: nn.Module,
    images: torch.Tensor,
    modality_index: torch.Tensor,
    partner: torch.Tensor,
    affine: torch.Tensor,
    *,
    mask_ratio: float = 0.8,
    block_size: int | Sequence[int] = 8,
    md_weight: float = 10.0,
    cmr_weight: float = 1.0,
    cl_weight: float = 1.0,
    contrastive_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    template_for_partner: bool = False,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    inferer: Callable[..., Any] | None = None,
    objective: str = "brainmvp",
    mae_fill: str = "zeros",
) -> dict[str, torch.Tensor]:
    """The BrainMVP pre-training losses of one batch (see the module docstring for the recipe).

    Args:
        network: a :class:`~brainmvp_components.networks.pretrain.BrainMVPPretrainModel`, possibly wrapped in
            ``DistributedDataParallel`` (the forward goes through the wrapper, the templates are read from
            ``.module``). ``network(x (N, 1, *roi))`` returns ``(reconstruction (N, 1, *roi), deepest features)``.
        images: ``(B, K, H, W, D)`` crops, ``K`` single-modality targets per case.
        modality_index: ``(B, K)`` indices into :data:`~brainmvp_components.data.modalities.CANONICAL_MODALITIES`.
        partner: ``(B, K)`` position (in ``0..K-1``) of each target's cross-modal partner, ``-1`` for none.
        affine: ``(B, 4, 4)`` voxel-to-world affines of the crops (``batch["image"].affine``), or one ``(4, 4)``.
        mask_ratio: fraction of blocks masked.
        block_size: block side in voxels.
        md_weight: weight of ``L_MD`` (the authors' code: 10).
        cmr_weight: weight of ``L_CMR``.
        cl_weight: weight of ``L_CL``.
        contrastive_loss: ``loss(features_a, features_b)`` on the deepest features of the two views; ``None``
            skips the term (``loss_cl`` is then 0 and nothing is computed for it).
        template_for_partner: fill view B with the template too (the authors' template warm-up).
        generator: random generator for the masks.
        mask: a precomputed ``BoolTensor (B * K, 1, H, W, D)`` mask (``True`` = masked) instead of a random one.
        inferer: runs the network on the views as ``inferer(views, network)`` (a MONAI ``Inferer``, e.g.
            ``SimpleInferer``); ``None`` calls ``network(views)``.
        objective: ``"brainmvp"`` (the recipe above) or ``"mae"``: one view whose masked blocks hold ``mae_fill``,
            ``loss = MSE(rec(view), x_m)``; the templates, partners, loss weights and ``template_for_partner``
            are not used.
        mae_fill: ``"zeros"`` or ``"mean"`` (of each crop's visible voxels); used by ``objective="mae"`` only.

    Returns:
        ``loss``, ``loss_md``, ``loss_cmr``, ``loss_cl`` (float32 scalars) and the tensors of the step, each with
        ``N = B * K`` rows in target order ``b * K + k``: ``target``, ``mask``, ``fill_a`` (the template crops),
        ``fill_b``, ``view_a``, ``view_b``, ``rec_a``, ``rec_b``, ``features_a``, ``features_b``. Under
        ``objective="mae"`` the ``_a`` and ``_b`` tensors are the one view's, ``fill_a`` is ``(N, 1, 1, 1, 1)``,
        and ``loss_md``, ``loss_cmr``, ``loss_cl`` are 0.

    Raises:
        ValueError: inconsistent shapes, partner positions outside ``-1..K-1``, an unknown ``objective`` or
            ``mae_fill``, or a ``contrastive_loss`` with ``objective="mae"``.
    """
    _check_objective(objective, mae_fill)
    if objective == "mae" and contrastive_loss is not None:
        raise ValueError("objective 'mae' has no contrastive term: pass contrastive_loss=None")
    if images.ndim != 5:
        raise ValueError(f"images must be (B, K, H, W, D), got shape {tuple(images.shape)}")
    batch, num_targets = images.shape[:2]
    roi = tuple(images.shape[2:])
    modality_index = torch.as_tensor(modality_index, device=images.device).long()
    partner = torch.as_tensor(partner, device=images.device).long()
    for name, value in (("modality_index", modality_index), ("partner", partner)):
        if tuple(value.shape) != (batch, num_targets):
            raise ValueError(f"{name} must be (B, K) = {(batch, num_targets)}, got shape {tuple(value.shape)}")
    if partner.numel() and (partner.min() < -1 or partner.max() >= num_targets):
        raise ValueError(f"partner positions must lie in [-1, {num_targets}), got {partner.tolist()}")
    affine = torch.Tensor.as_subclass(torch.as_tensor(affine), torch.Tensor).detach().to("cpu", torch.float64)
    if affine.shape == (4, 4):
        affine = affine.expand(batch, 4, 4)
    if tuple(affine.shape) != (batch, 4, 4):
        raise ValueError(f"affine must be (B, 4, 4) with B = {batch} or (4, 4), got shape {tuple(affine.shape)}")

    n = batch * num_targets
    target = images.reshape(n, 1, *roi)
    if mask is None:
        mask = random_block_mask(n, roi, block_size, mask_ratio, generator=generator, device=images.device)
    elif tuple(mask.shape) != (n, 1, *roi):
        raise ValueError(f"mask must be (B * K, 1, H, W, D) = {(n, 1, *roi)}, got shape {tuple(mask.shape)}")
    if objective == "mae":
        return _mae_losses(network, target, mask, _constant_fill(target, mask, mae_fill), inferer)

    templates = unwrap_module(network).templates
    rows = templates.indices_for(modality_index.reshape(-1))
    fill_a = templates.crop(rows, affine.repeat_interleave(num_targets, dim=0), roi)

    own = torch.arange(n, device=images.device).view(batch, num_targets)
    first = (torch.arange(batch, device=images.device) * num_targets)[:, None]
    has_partner = partner >= 0
    partner_rows = torch.where(has_partner, partner + first, own).reshape(-1)
    use_template = (~has_partner).reshape(-1)
    if template_for_partner:
        use_template = torch.ones_like(use_template)
    fill_b = torch.where(use_template.view(n, 1, 1, 1, 1), fill_a.to(target.dtype), target[partner_rows])

    view_a = fill_masked(target, mask, fill_a)
    view_b = fill_masked(target, mask, fill_b)

    views = torch.cat([view_a, view_b])
    reconstruction, features = network(views) if inferer is None else inferer(views, network)
    rec_a, rec_b = reconstruction[:n], reconstruction[n:]
    features_a, features_b = features[:n], features[n:]
    reference = target.float()
    loss_md = F.mse_loss(rec_a.float(), reference)
    loss_cmr = F.mse_loss(rec_b.float(), reference)
    if contrastive_loss is None:
        loss_cl = torch.zeros((), device=loss_md.device)
    else:
        loss_cl = contrastive_loss(features_a.float(), features_b.float())
    loss = md_weight * loss_md + cmr_weight * loss_cmr + cl_weight * loss_cl
    return {
        "loss": loss,
        "loss_md": loss_md,
        "loss_cmr": loss_cmr,
        "loss_cl": loss_cl,
        "target": target,
        "mask": mask,
        "fill_a": fill_a,
        "fill_b": fill_b,
        "view_a": view_a,
        "view_b": view_b,
        "rec_a": rec_a,
        "rec_b": rec_b,
        "features_a": features_a,
        "features_b": features_b,
    }


def _mae_losses(
    network: nn.Module,
    target: torch.Tensor,
    mask: torch.Tensor,
    fill: torch.Tensor,
    inferer: Callable[..., Any] | None,
) -> dict[str, torch.Tensor]:
    """The masked-image-modelling baseline: one view, ``loss = MSE(rec(view), target)`` (see
    :func:`compute_pretrain_losses`)."""
    view = fill_masked(target, mask, fill)
    reconstruction, features = network(view) if inferer is None else inferer(view, network)
    loss = F.mse_loss(reconstruction.float(), target.float())
    zero = torch.zeros((), device=loss.device)
    return {
        "loss": loss,
        "loss_md": zero,
        "loss_cmr": zero,
        "loss_cl": zero,
        "target": target,
        "mask": mask,
        "fill_a": fill,
        "fill_b": fill,
        "view_a": view,
        "view_b": view,
        "rec_a": reconstruction,
        "rec_b": reconstruction,
        "features_a": features,
        "features_b": features,
    }


def _amp_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.replace("torch.", ""), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown amp_dtype {dtype!r}; use 'float16' or 'bfloat16'")
        dtype = resolved
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"amp_dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    return dtype


class BrainMVPPretrainTrainer(Trainer):
    """BrainMVP pre-training trainer: the per-iteration recipe of :func:`compute_pretrain_losses` with AMP,
    gradient accumulation and the authors' epoch schedule (template warm-up, late contrastive learning).

    Each batch is a dictionary with ``image`` (a ``MetaTensor (B, K, H, W, D)`` whose affine, ``(B, 4, 4)``, places
    every crop in world space), ``modality_index`` ``(B, K)`` and ``partner`` ``(B, K)``, as produced by the
    pre-training transforms and MONAI's collation. ``engine.state.output`` is, in the form of MONAI's decollated
    outputs, a one-item list of a dictionary with the detached scalar terms ``loss``, ``loss_md``, ``loss_cmr``,
    ``loss_cl`` and the learning rate ``lr``: ``StatsHandler`` and ``TensorBoardStatsHandler`` with their default
    ``output_transform`` (``lambda x: x[0]``) log every term, and ``from_engine(["loss"], first=True)`` (the
    default of ``--tracking mlflow``) picks the total. The epoch means of the terms are the metrics
    ``train_loss``, ``train_loss_md``, ``train_loss_cmr``, ``train_loss_cl``, logged at epoch level by those
    handlers and by MLflow. Events fire as in ``SupervisedTrainer``: ``FORWARD_COMPLETED`` and
    ``LOSS_COMPLETED`` after the losses, ``BACKWARD_COMPLETED`` after the backward pass and ``MODEL_COMPLETED`` at the
    end of the iteration (after the optimizer step, when there is one).

    Epochs are ignite's, counted from 1.

    Args:
        device: the training device.
        max_epochs: number of epochs (the authors: 1500).
        train_data_loader: the pre-training data loader.
        network: the :class:`~brainmvp_components.networks.pretrain.BrainMVPPretrainModel`, possibly wrapped in
            ``DistributedDataParallel``.
        optimizer: optimizer over the network's parameters (templates included).
        contrastive_loss: loss on the deepest features of the two views (``InfoNCELoss``); ``None`` disables it.
        inferer: runs the network on the masked views (``inferer(views, network)``); default ``SimpleInferer()``.
        mask_ratio: fraction of masked blocks (the authors: 0.8).
        block_size: block side in voxels (8).
        md_weight: weight of the distillation reconstruction loss (the authors' code: 10).
        cmr_weight: weight of the cross-modal reconstruction loss (1).
        cl_weight: weight of the contrastive loss (1).
        template_warmup_epochs: epochs ``1..template_warmup_epochs`` fill view B with the template as well
            (the authors: 300 of 1500).
        contrastive_start_epoch: first epoch with the contrastive term (the authors: 1000).
        objective: ``"brainmvp"`` (default) or ``"mae"``, the masked-image-modelling baseline of
            :func:`compute_pretrain_losses` (no templates, no cross-modal fill, no contrastive term; the loss
            weights and the epoch schedule are then unused).
        mae_fill: fill of the masked blocks under ``objective="mae"``: ``"zeros"`` or ``"mean"``.
        amp: automatic mixed precision via ``torch.autocast`` on the device's type.
        amp_dtype: autocast dtype; default ``float16`` on CUDA (with a gradient scaler) and ``bfloat16`` elsewhere.
        gradient_accumulation_steps: step the optimizer every this many iterations (the authors: 2), and at the
            end of each epoch; the loss is divided by it so the gradient is the mean over the accumulated batches.
        seed: seed of the mask generator (offset by the distributed rank).
        epoch_length: iterations per epoch; default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        train_handlers: ignite/MONAI handlers to attach (after the loss metrics, so epoch-level handlers see them).
        optim_set_to_none: ``optimizer.zero_grad(set_to_none=...)``.
        image_key: batch key of the crops.
        modality_index_key: batch key of the modality indices.
        partner_key: batch key of the partner positions.
        event_names: additional ignite events to register.
        event_to_attr: event-to-state-attribute map for ``event_names``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        contrastive_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        inferer: Inferer | None = None,
        mask_ratio: float = 0.8,
        block_size: int | Sequence[int] = 8,
        md_weight: float = 10.0,
        cmr_weight: float = 1.0,
        cl_weight: float = 1.0,
        template_warmup_epochs: int = 300,
        contrastive_start_epoch: int = 1000,
        objective: str = "brainmvp",
        mae_fill: str = "zeros",
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = None,
        gradient_accumulation_steps: int = 1,
        seed: int = 0,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        optim_set_to_none: bool = False,
        image_key: str = "image",
        modality_index_key: str = "modality_index",
        partner_key: str = "partner",
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
    ) -> None:
        if int(gradient_accumulation_steps) < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be a positive integer, got {gradient_accumulation_steps}"
            )
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1], got {mask_ratio}")
        _check_objective(objective, mae_fill)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=False,
        )
        module = unwrap_module(network)
        if not hasattr(module, "templates"):
            raise ValueError(f"network must be a BrainMVPPretrainModel (with .templates), got {type(module).__name__}")
        self.network = network
        self.optimizer = optimizer
        self.contrastive_loss = contrastive_loss
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.mask_ratio = float(mask_ratio)
        self.block_size = block_size
        self.md_weight = float(md_weight)
        self.cmr_weight = float(cmr_weight)
        self.cl_weight = float(cl_weight)
        self.template_warmup_epochs = int(template_warmup_epochs)
        self.contrastive_start_epoch = int(contrastive_start_epoch)
        self.objective, self.mae_fill = objective, mae_fill
        self.accumulation_steps = int(gradient_accumulation_steps)
        self.optim_set_to_none = optim_set_to_none
        self.image_key, self.modality_index_key, self.partner_key = image_key, modality_index_key, partner_key
        self.amp_dtype = _amp_dtype(amp_dtype, self.state.device)
        # built here rather than in run() (as Trainer does) so checkpoint handlers can save and restore it
        use_scaler = amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.state.device.type) if use_scaler else None
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.generator = torch.Generator().manual_seed(int(seed) + rank)

        for key in LOSS_KEYS:
            Average(output_transform=_item(key), device=self.state.device).attach(self, f"train_{key}")
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    def run(self) -> None:  # type: ignore[override]
        """Run training; repeated calls continue from the current state (the scaler is kept, unlike ``Trainer``)."""
        Workflow.run(self)

    def schedule(self, epoch: int) -> dict[str, Any]:
        """Epoch-dependent arguments of :func:`compute_pretrain_losses`: template warm-up and contrastive term
        (never under ``objective="mae"``)."""
        late = epoch >= self.contrastive_start_epoch and self.objective == "brainmvp"
        contrastive = self.contrastive_loss if late else None
        return {"template_for_partner": epoch <= self.template_warmup_epochs, "contrastive_loss": contrastive}

    def loss_kwargs(self) -> dict[str, Any]:
        """Fixed arguments of :func:`compute_pretrain_losses` (inferer, objective, masking and loss weights)."""
        return {
            "inferer": self.inferer,
            "objective": self.objective,
            "mae_fill": self.mae_fill,
            "mask_ratio": self.mask_ratio,
            "block_size": self.block_size,
            "md_weight": self.md_weight,
            "cmr_weight": self.cmr_weight,
            "cl_weight": self.cl_weight,
        }

    def prepare_pretrain_batch(self, batchdata: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, modality_index, partner, affine)`` of a collated batch, the tensors on the trainer's device.

        Raises:
            KeyError: a key is missing.
            TypeError: the image is not a ``MetaTensor`` (its affine locates the template crops).
        """
        missing = [k for k in (self.image_key, self.modality_index_key, self.partner_key) if k not in batchdata]
        if missing:
            raise KeyError(
                f"pre-training batches need {[self.image_key, self.modality_index_key, self.partner_key]}; "
                f"missing {missing} (use LoadModalitiesd and SampleModalitiesd in the preprocessing)"
            )
        image = batchdata[self.image_key]
        if not isinstance(image, MetaTensor):
            raise TypeError(
                f"batch[{self.image_key!r}] must be a MetaTensor whose affine places each crop in world space "
                f"(for the template crops), got {type(image).__name__}"
            )
        device, non_blocking = self.state.device, self.non_blocking
        images = image.as_tensor().to(device, non_blocking=non_blocking)
        modality_index = torch.as_tensor(batchdata[self.modality_index_key]).to(device, non_blocking=non_blocking)
        partner = torch.as_tensor(batchdata[self.partner_key]).to(device, non_blocking=non_blocking)
        affine = torch.as_tensor(image.affine)
        if affine.ndim == 2:
            affine = affine.expand(images.shape[0], 4, 4)
        return images, modality_index, partner, affine

    def _iteration(self, engine: BrainMVPPretrainTrainer, batchdata: dict[str, Any]) -> list[dict]:
        """One pre-training iteration (called by ignite for every batch); returns ``engine.state.output``.

        Raises:
            ValueError: ``batchdata`` is None.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, modality_index, partner, affine = engine.prepare_pretrain_batch(batchdata)

        acc = engine.accumulation_steps
        should_zero_grad, should_step = accumulation_state(engine.state.iteration, engine.state.epoch_length, acc)

        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        # DDP: gradients of the accumulation steps before an optimizer step need no all-reduce
        skip_sync = not should_step and isinstance(engine.network, nn.parallel.DistributedDataParallel)
        with engine.network.no_sync() if skip_sync else contextlib.nullcontext():
            with torch.autocast(engine.state.device.type, dtype=engine.amp_dtype, enabled=engine.amp):
                terms = compute_pretrain_losses(
                    engine.network,
                    images,
                    modality_index,
                    partner,
                    affine,
                    generator=engine.generator,
                    **engine.loss_kwargs(),
                    **engine.schedule(engine.state.epoch),
                )
            summary = {key: terms[key].detach() for key in LOSS_KEYS}
            summary["lr"] = engine.optimizer.param_groups[0]["lr"]
            engine.state.output = [summary]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            loss = terms["loss"] / acc
            if engine.scaler is not None:
                engine.scaler.scale(loss).backward()
            else:
                loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            if engine.scaler is not None:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def _item(key: str) -> Callable[[list[dict]], torch.Tensor]:
    def getter(output: list[dict]) -> torch.Tensor:
        return output[0][key]

    return getter
