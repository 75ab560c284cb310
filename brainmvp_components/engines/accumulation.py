"""Gradient-accumulation bookkeeping shared by the brainmvp trainers."""

from __future__ import annotations

__all__ = ["accumulation_state"]


def accumulation_state(iteration: int, epoch_length: int | None, steps: int) -> tuple[bool, bool]:
    """``(zero the gradients before this iteration, step the optimiser after it)`` as MONAI's ``SupervisedTrainer``.

    Args:
        iteration: the engine's 1-based global iteration.
        epoch_length: iterations per epoch (``None`` when unknown); the optimiser also steps at the end of each
            epoch so that no accumulated gradient carries over.
        steps: accumulate this many iterations per optimiser step.
    """
    local_iter = iteration - 1
    if epoch_length is not None:
        local_iter %= epoch_length
    zero_grad = local_iter % steps == 0
    step = (local_iter + 1) % steps == 0 or (epoch_length is not None and local_iter + 1 == epoch_length)
    return zero_grad, step
