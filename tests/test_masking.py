"""Tests for vectorised block masking and filling."""

from __future__ import annotations

import math

import pytest
import torch

from brainmvp_components.transforms.masking import BlockMasking, fill_masked, num_kept_blocks, random_block_mask


def _block_view(mask: torch.Tensor, block: tuple[int, int, int]) -> torch.Tensor:
    b, _, h, w, d = mask.shape
    return mask.view(b, h // block[0], block[0], w // block[1], block[1], d // block[2], block[2])


@pytest.mark.parametrize(
    "roi, block, ratio",
    [
        ((32, 32, 32), 8, 0.8),
        ((64, 32, 32), 8, 0.8),
        ((96, 96, 96), 8, 0.8),
        ((32, 32, 32), 8, 0.75),
        ((24, 16, 8), (4, 8, 2), 0.6),
        ((40, 40, 40), 8, 0.8),  # 125 blocks: 25 kept even though 125 * (1 - 0.8) < 25 in floating point
    ],
)
def test_exact_kept_fraction_and_block_alignment(roi, block, ratio):
    block3 = (block,) * 3 if isinstance(block, int) else block
    mask = random_block_mask(3, roi, block_size=block, mask_ratio=ratio, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (3, 1, *roi)
    blocks = _block_view(mask, block3)
    first = blocks[:, :, :1, :, :1, :, :1]
    assert torch.equal(blocks, first.expand_as(blocks)), "mask varies within a block"
    num_blocks = math.prod(s // b for s, b in zip(roi, block3))
    kept = (~first).flatten(1).sum(1)
    expected = math.floor(round(num_blocks * (1 - ratio), 9))
    assert kept.tolist() == [expected] * 3
    assert num_kept_blocks(num_blocks, ratio) == expected


def test_samples_differ_and_seed_reproduces():
    a = random_block_mask(4, (32, 32, 32), generator=torch.Generator().manual_seed(7))
    b = random_block_mask(4, (32, 32, 32), generator=torch.Generator().manual_seed(7))
    c = random_block_mask(4, (32, 32, 32), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])


def test_extreme_ratios():
    assert random_block_mask(2, (16, 16, 16), mask_ratio=0.0).sum() == 0
    assert random_block_mask(2, (16, 16, 16), mask_ratio=1.0).all()


def test_bad_size_and_ratio():
    with pytest.raises(ValueError, match=r"\(30, 32, 32\).*\(8, 8, 8\)"):
        random_block_mask(1, (30, 32, 32), block_size=8)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_block_mask(1, (32, 32, 32), mask_ratio=1.5)


def test_fill_sources_elementwise():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, 8, generator=gen)
    fill = torch.rand(2, 3, 16, 16, 8, generator=gen) + 10
    mask = random_block_mask(2, (16, 16, 8), block_size=(4, 4, 2), mask_ratio=0.5, generator=gen)
    out = fill_masked(x, mask, fill)
    full = mask.expand_as(x)
    assert torch.equal(out[full], fill[full])
    assert torch.equal(out[~full], x[~full])
    # a single-channel fill (a template) broadcasts over channels, a scalar works too
    template = torch.rand(2, 1, 16, 16, 8, generator=gen)
    out = fill_masked(x, mask, template)
    assert torch.equal(out[full], template.expand_as(x)[full])
    assert torch.equal(fill_masked(x, mask, 0.0)[full], torch.zeros(int(full.sum())))


def test_fill_gradient_reaches_only_masked_fill():
    x = torch.rand(1, 1, 8, 8, 8)
    fill = torch.rand(1, 1, 8, 8, 8, requires_grad=True)
    mask = random_block_mask(1, (8, 8, 8), block_size=4, mask_ratio=0.5)
    fill_masked(x, mask, fill).sum().backward()
    assert torch.equal(fill.grad, mask.float())


def test_fill_shape_errors():
    x = torch.rand(2, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="does not fit"):
        fill_masked(x, torch.zeros(2, 1, 8, 8, 4, dtype=torch.bool), 0.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        fill_masked(x, torch.zeros(2, 1, 8, 8, 8, dtype=torch.bool), torch.rand(3, 1, 8, 8, 8))


def test_block_masking_module():
    masking = BlockMasking(block_size=4, mask_ratio=0.75)
    x = torch.rand(2, 1, 16, 16, 16)
    filled, mask = masking.apply(x, torch.ones_like(x), generator=torch.Generator().manual_seed(3))
    assert mask.shape == (2, 1, 16, 16, 16)
    assert (~mask).flatten(1).sum(1).tolist() == [16 * 4**3] * 2
    assert torch.equal(filled, torch.where(mask, 1.0, x))
    assert "mask_ratio=0.75" in repr(masking)


@pytest.mark.parametrize("last", [1, 2, 3, 4, 8])
def test_word_expansion_matches_plain_expansion(last):
    from brainmvp_components.transforms.masking import _blocks_to_voxels

    masked = torch.rand(3, 2 * 3 * 4) < 0.5
    grid, block = (2, 3, 4), (2, 1, last)
    expected = masked.view(3, 1, 2, 1, 3, 1, 4, 1).expand(3, 1, 2, 2, 3, 1, 4, last).reshape(3, 1, 4, 3, 4 * last)
    got = _blocks_to_voxels(masked, grid, block)
    assert got.dtype == torch.bool and torch.equal(got, expected)
    assert torch.equal(got.long().bool(), got)  # the byte view holds only 0 and 1
