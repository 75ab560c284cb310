"""Vectorised block masking and filling for BrainMVP pre-training.

A crop of shape ``(H, W, D)`` is split into non-overlapping blocks (``8 x 8 x 8`` voxels by default) and a
fraction ``r`` of them is masked. The masked blocks of the target modality are then filled with another
source: the learnable modality template for the distillation view, or the co-located voxels of another
modality of the same case for the cross-modal reconstruction view (Rui et al., "Multi-modal Vision
Pre-training for Medical Image Analysis", CVPR 2025).

Every sample keeps exactly ``floor(N * (1 - r))`` of its ``N`` blocks. The blocks to keep are drawn for the
whole batch at once (ranks of a ``(B, N)`` uniform draw, i.e. a batched random permutation), and the block
mask is expanded to voxels with a view/expand/reshape, so neither samples nor blocks are visited in Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["BlockMasking", "block_grid", "num_kept_blocks", "random_block_mask", "fill_masked"]


def _as_triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        values = (value,) * 3
    else:
        values = tuple(int(v) for v in value)
    if len(values) != 3 or any(v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return values  # type: ignore[return-value]


def block_grid(roi_shape: Sequence[int], block_size: int | Sequence[int] = 8) -> tuple[int, int, int]:
    """Number of blocks along each axis of ``roi_shape``.

    Raises:
        ValueError: a side of ``roi_shape`` is not divisible by the block size along that axis.
    """
    roi = _as_triple(roi_shape, "roi_shape")
    block = _as_triple(block_size, "block_size")
    if any(s % b for s, b in zip(roi, block)):
        raise ValueError(
            f"every side of the ROI must be divisible by the block size: roi_shape {roi} is not divisible "
            f"by block_size {block}"
        )
    return tuple(s // b for s, b in zip(roi, block))  # type: ignore[return-value]


def num_kept_blocks(num_blocks: int, mask_ratio: float) -> int:
    """``floor(num_blocks * (1 - mask_ratio))``, robust to the float error of ``1 - r`` (``1 - 0.8 < 0.2``)."""
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1], got {mask_ratio}")
    return min(num_blocks, int(math.floor(num_blocks * (1.0 - mask_ratio) + 1e-9)))


def random_block_mask(
    batch_size: int,
    roi_shape: Sequence[int],
    block_size: int | Sequence[int] = 8,
    mask_ratio: float = 0.8,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random block mask, ``True`` where a voxel is masked.

    Args:
        batch_size: number of samples ``B``; each gets its own random blocks.
        roi_shape: spatial shape ``(H, W, D)`` of the crop.
        block_size: block side in voxels, one int or one per axis; must divide the matching ROI side.
        mask_ratio: fraction ``r`` of blocks to mask. Exactly ``floor(N * (1 - r))`` of the ``N`` blocks are
            kept per sample and the other ``N - floor(N * (1 - r))`` are masked.
        generator: optional ``torch.Generator`` for reproducible masks; the random draw happens on its device.
        device: device of the returned mask (default: the generator's device, else the CPU).

    Returns:
        ``BoolTensor (B, 1, H, W, D)``, constant within each block.

    Raises:
        ValueError: the ROI is not divisible by the block size, the ratio is outside [0, 1] or ``B < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    grid = block_grid(roi_shape, block_size)
    block = _as_triple(block_size, "block_size")
    num_blocks = grid[0] * grid[1] * grid[2]
    keep = num_kept_blocks(num_blocks, mask_ratio)
    draw_device = generator.device if generator is not None else device
    noise = torch.rand(batch_size, num_blocks, generator=generator, device=draw_device)
    # rank of each block in a random permutation: the `keep` lowest ranks are kept
    rank = noise.argsort(dim=1).argsort(dim=1)
    masked = rank >= keep
    if device is not None:
        masked = masked.to(device)
    return _blocks_to_voxels(masked, grid, block)


# A run of ``b`` bools along the last axis is ``b`` bytes; for b in 1, 2, 4, 8 it is one integer whose bytes are all
# 0 or all 1, so the last axis can be expanded one word per block instead of one byte per voxel.
_WORD_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BYTES_OF_ONES = {1: 0x01, 2: 0x0101, 4: 0x01010101, 8: 0x0101010101010101}


def _blocks_to_voxels(masked: torch.Tensor, grid: tuple[int, int, int], block: tuple[int, int, int]) -> torch.Tensor:
    """Expand a block mask ``(B, N)`` (``N`` = blocks in C order of ``grid``) to voxels ``(B, 1, *roi)``."""
    batch = masked.shape[0]
    g0, g1, g2 = grid
    b0, b1, b2 = block
    if b2 in _WORD_DTYPES:
        words = masked.view(batch, 1, g0, 1, g1, 1, g2).to(_WORD_DTYPES[b2]) * _BYTES_OF_ONES[b2]
        words = words.expand(batch, 1, g0, b0, g1, b1, g2).reshape(batch, 1, g0 * b0, g1 * b1, g2)
        return words.view(torch.uint8).view(torch.bool)
    voxels = masked.view(batch, 1, g0, 1, g1, 1, g2, 1).expand(batch, 1, g0, b0, g1, b1, g2, b2)
    return voxels.reshape(batch, 1, g0 * b0, g1 * b1, g2 * b2)


def fill_masked(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
    """Replace the masked voxels of ``x`` by ``fill``.

    Args:
        x: image batch ``(B, C, *spatial)``.
        mask: ``BoolTensor (B, 1, *spatial)`` or ``(B, C, *spatial)``, ``True`` where ``fill`` is used; a single
            channel is broadcast over the channels of ``x``.
        fill: the replacement, a tensor broadcastable to ``x`` (``(B, C, *spatial)``, ``(B, 1, *spatial)``, ...) or
            a number. Gradients flow to ``fill`` through the masked voxels (how the templates learn).

    Returns:
        ``(B, C, *spatial)`` tensor with the dtype of ``x``: ``x`` where ``mask`` is ``False``, ``fill`` where ``True``.

    Raises:
        ValueError: the mask or fill shape does not fit ``x``.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if (
        mask.ndim != x.ndim
        or mask.shape[0] != x.shape[0]
        or mask.shape[2:] != x.shape[2:]
        or mask.shape[1] not in (1, x.shape[1])
    ):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit x of shape {tuple(x.shape)}; expected "
            f"(B, 1, *spatial) or (B, C, *spatial)"
        )
    if isinstance(fill, torch.Tensor):
        try:
            torch.broadcast_shapes(fill.shape, x.shape)
        except RuntimeError as err:
            raise ValueError(
                f"fill of shape {tuple(fill.shape)} does not broadcast to x of shape {tuple(x.shape)}"
            ) from err
        fill = fill.to(dtype=x.dtype)
    else:
        fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    return torch.where(mask, fill, x)


class BlockMasking:
    """Block masking settings bundled for configuration: ``BlockMasking(block_size=8, mask_ratio=0.8)``.

    Calling it draws a mask (see :func:`random_block_mask`); :meth:`apply` masks and fills in one step.

    Args:
        block_size: block side in voxels, one int or one per axis.
        mask_ratio: fraction of blocks masked (the authors pre-train with 0.8).
    """

    def __init__(self, block_size: int | Sequence[int] = 8, mask_ratio: float = 0.8) -> None:
        self.block_size = _as_triple(block_size, "block_size")
        num_kept_blocks(1, mask_ratio)  # validates the ratio
        self.mask_ratio = float(mask_ratio)

    def __call__(
        self,
        batch_size: int,
        roi_shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``BoolTensor (B, 1, *roi_shape)``, ``True`` = masked."""
        return random_block_mask(batch_size, roi_shape, self.block_size, self.mask_ratio, generator, device)

    def mask_like(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A mask ``(B, 1, *spatial)`` for the batch ``x (B, C, *spatial)``, on the device of ``x``."""
        if x.ndim != 5:
            raise ValueError(f"expected a batch (B, C, H, W, D), got shape {tuple(x.shape)}")
        return self(x.shape[0], x.shape[2:], generator=generator, device=x.device)

    def apply(
        self, x: torch.Tensor, fill: torch.Tensor | float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a mask for ``x (B, C, H, W, D)`` and fill it: returns ``(filled, mask)``."""
        mask = self.mask_like(x, generator)
        return fill_masked(x, mask, fill), mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_size={self.block_size}, mask_ratio={self.mask_ratio})"
