"""Tests for the symmetric InfoNCE loss, including the distributed gather of negatives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from brainmvp_components.losses.contrastive import InfoNCELoss, ProjectionHead

A = [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]
B = [[1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]]


def _hand_infonce(a, b, temperature):
    """Symmetric InfoNCE written out with explicit cosines and log-softmax sums (no torch)."""

    def cos(u, v):
        return sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    def direction(p, q):
        total = 0.0
        for i, u in enumerate(p):
            logits = [cos(u, v) / temperature for v in q]
            total += -(logits[i] - math.log(sum(math.exp(z) for z in logits)))
        return total / len(p)

    return 0.5 * (direction(a, b) + direction(b, a))


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_matches_hand_computed_values(temperature):
    loss = InfoNCELoss(temperature=temperature)(torch.tensor(A), torch.tensor(B))
    assert loss.item() == pytest.approx(_hand_infonce(A, B, temperature), rel=1e-5)


def test_symmetric_and_feature_maps_flattened():
    a, b = torch.randn(4, 8, 2, 2, 2), torch.randn(4, 8, 2, 2, 2)
    loss = InfoNCELoss()
    torch.testing.assert_close(loss(a, b), loss(b, a))
    torch.testing.assert_close(loss(a, b), loss(a.flatten(1), b.flatten(1)))
    per_sample = InfoNCELoss(reduction="none")(a, b)
    assert per_sample.shape == (4,)
    torch.testing.assert_close(per_sample.mean(), loss(a, b))


def test_temperature_sharpens():
    a = torch.randn(6, 16)
    b = a + 0.1 * torch.randn(6, 16)  # positives clearly most similar
    warm, cold = InfoNCELoss(temperature=1.0)(a, b), InfoNCELoss(temperature=0.1)(a, b)
    assert cold < warm
    # identical views at temperature 1 still pay for the negatives: at least log(B) - 2 (cosines in [-1, 1])
    assert InfoNCELoss()(a, a) > math.log(6) - 2


def test_projection_head_path():
    torch.manual_seed(0)
    head = ProjectionHead(12, hidden=16, out=4)
    a, b = torch.randn(3, 3, 4, requires_grad=True), torch.randn(3, 3, 4)
    loss = InfoNCELoss(projection=head)
    value = loss(a, b)
    torch.testing.assert_close(value, InfoNCELoss()(head(a.flatten(1)), head(b.flatten(1))))
    value.backward()
    assert head[0].weight.grad is not None and a.grad is not None
    assert head(torch.randn(5, 12)).shape == (5, 4)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 4\)"):
        InfoNCELoss()(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="B, F"):
        InfoNCELoss()(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0)


def _distributed_worker(rank, world, init_file, a, b, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        per_rank = a.shape[0] // world
        local_a = a[rank * per_rank : (rank + 1) * per_rank].clone().requires_grad_(True)
        local_b = b[rank * per_rank : (rank + 1) * per_rank].clone().requires_grad_(True)
        loss = InfoNCELoss(temperature=0.5)(local_a, local_b)
        loss.backward()
        results[rank] = (loss.detach(), local_a.grad, local_b.grad)
    finally:
        dist.destroy_process_group()


def test_distributed_gather_equals_global_batch(tmp_path):
    world = 2
    torch.manual_seed(0)
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_distributed_worker, args=(world, str(tmp_path / "init"), a, b, results), nprocs=world, join=True)

    ga, gb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    reference = InfoNCELoss(temperature=0.5, reduction="none")(ga, gb)
    reference.mean().backward()
    for rank in range(world):
        loss, grad_a, grad_b = results[rank]
        rows = slice(rank * 3, (rank + 1) * 3)
        # each rank's loss is the global per-sample loss averaged over its rows ...
        torch.testing.assert_close(loss, reference[rows].mean().detach())
        # ... and its gradient (summed over ranks by the gather's backward) is world x the global gradient,
        # which DDP's averaging over ranks turns into the exact global-batch gradient
        torch.testing.assert_close(grad_a, world * ga.grad[rows])
        torch.testing.assert_close(grad_b, world * gb.grad[rows])
    mean_loss = sum(results[r][0] for r in range(world)) / world
    torch.testing.assert_close(mean_loss, reference.mean().detach())
