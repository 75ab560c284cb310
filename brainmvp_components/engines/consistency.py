"""Paired-copy fine-tuning iteration: task loss on two augmented copies plus feature consistency."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from brainmvp_components.engines.accumulation import accumulation_state
from brainmvp_components.losses.consistency import FeatureConsistencyLoss

__all__ = ["ConsistencyTrainer", "ConsistencyKeys"]


class ConsistencyKeys:
    """Extra keys of ``engine.state.output`` written by :class:`ConsistencyTrainer`."""

    TASK_LOSS = "task_loss"
    CONSISTENCY_LOSS = "consistency_loss"


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    for attr in ("module", "_orig_mod"):
        while hasattr(network, attr) and isinstance(getattr(network, attr), torch.nn.Module):
            network = getattr(network, attr)
    return network


def _plain(x):
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def _first_half(pred, batch_size: int):
    if isinstance(pred, (list, tuple)):
        return type(pred)(_first_half(p, batch_size) for p in pred)
    return pred[:batch_size]


class ConsistencyTrainer(SupervisedTrainer):
    """A :class:`~monai.engines.SupervisedTrainer` whose iteration also learns from a second augmented copy.

    When the batch holds ``pair_key`` (an independently augmented copy of ``image``, e.g. written by
    :class:`~brainmvp_components.transforms.templates.RandTemplateReplaced`), one iteration

    1. forwards both copies as one batch ``cat([image, image_pair])`` (so normalisation layers see both and a
       DistributedDataParallel network runs one forward per backward),
    2. applies ``loss_function`` to the predictions of both copies against the label (the mean of the two),
    3. adds ``consistency_weight * consistency_loss(features_a, features_b)``, where the features are the
       output of the submodule named ``feature_layer`` (dotted name, captured with a forward hook during
       this forward only; a list/tuple output contributes its last element): ``"encoder"`` gives a
       UniFormer encoder's deepest features (the paper), ``"ms_out.0"`` the coarsest deep-supervision output
       of a ``UniUNet`` (the authors' code).

    Without ``pair_key`` in the batch, or with ``consistency_weight == 0`` and no pair, it is exactly a
    ``SupervisedTrainer``. The events (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
    ``MODEL_COMPLETED``), AMP and gradient accumulation behave as in ``SupervisedTrainer``.
    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (of the first copy), ``loss`` (total),
    ``task_loss`` and ``consistency_loss``. The iteration is task-agnostic: segmentation and classification
    networks alike.

    Args:
        consistency_weight: weight of the consistency term (0.1 in BrainMVP).
        feature_layer: dotted name of the submodule whose output is compared (``network.get_submodule``).
        consistency_loss: callable ``(features_a, features_b) -> scalar``; default
            :class:`~brainmvp_components.losses.consistency.FeatureConsistencyLoss` (MSE).
        pair_key: batch key of the second copy.
        other arguments: as :class:`~monai.engines.SupervisedTrainer`.
    """

    def __init__(
        self,
        *args,
        consistency_weight: float = 0.1,
        feature_layer: str = "encoder",
        consistency_loss: Callable | None = None,
        pair_key: str = "image_pair",
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if consistency_weight < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {consistency_weight}")
        self.consistency_weight = float(consistency_weight)
        self.feature_layer = feature_layer
        self.consistency_loss = FeatureConsistencyLoss() if consistency_loss is None else consistency_loss
        self.pair_key = pair_key
        self.feature_module = self._find_feature_module(self.network, feature_layer)

    @staticmethod
    def _find_feature_module(network: torch.nn.Module, name: str) -> torch.nn.Module:
        base = _unwrap(network)
        try:
            return base.get_submodule(name)
        except AttributeError as e:
            children = ", ".join(n for n, _ in base.named_children())
            raise ValueError(
                f"feature_layer {name!r} is not a submodule of {type(base).__name__} (its children: {children})"
            ) from e

    def _iteration(self, engine: ConsistencyTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if not isinstance(batchdata, dict) or self.pair_key not in batchdata:
            return super()._iteration(engine, batchdata)
        if engine.compile:
            raise ValueError("ConsistencyTrainer does not support compile=True with paired copies")

        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        pair = batchdata[self.pair_key].to(device=engine.state.device, non_blocking=engine.non_blocking)
        if pair.shape != inputs.shape:
            raise ValueError(f"{self.pair_key} {tuple(pair.shape)} and image {tuple(inputs.shape)} differ in shape")
        batch_size = inputs.shape[0]
        both_inputs = torch.cat([_plain(inputs), _plain(pair)], dim=0)
        both_targets = None if targets is None else torch.cat([_plain(targets), _plain(targets)], dim=0)

        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        def _compute_pred_loss():
            captured: list = []
            hook = self.feature_module.register_forward_hook(lambda _m, _i, out: captured.append(out))
            try:
                pred = engine.inferer(both_inputs, engine.network, *args, **kwargs)
            finally:
                hook.remove()
            if not captured:
                raise RuntimeError(f"feature_layer {self.feature_layer!r} was not called in the forward pass")
            engine.state.output[Keys.PRED] = _first_half(pred, batch_size)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            features = captured[-1]
            if isinstance(features, (list, tuple)):
                features = features[-1]
            task_loss = engine.loss_function(pred, both_targets).mean()
            consistency = self.consistency_loss(features[:batch_size], features[batch_size:])
            engine.state.output[ConsistencyKeys.TASK_LOSS] = task_loss.detach()
            engine.state.output[ConsistencyKeys.CONSISTENCY_LOSS] = consistency.detach()
            engine.state.output[Keys.LOSS] = task_loss + self.consistency_weight * consistency
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        should_zero_grad, should_step = accumulation_state(
            engine.state.iteration, engine.state.epoch_length, engine.accumulation_steps
        )
        acc = engine.accumulation_steps
        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                _compute_pred_loss()
            loss = engine.state.output[Keys.LOSS]
            engine.scaler.scale(loss / acc if acc > 1 else loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if should_step:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
        else:
            _compute_pred_loss()
            loss = engine.state.output[Keys.LOSS]
            (loss / acc if acc > 1 else loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if should_step:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
