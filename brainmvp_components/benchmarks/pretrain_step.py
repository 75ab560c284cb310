"""Benchmark the BrainMVP pre-training building blocks and one full training step.

Two parts, each printed as a table:

1. ``masking``: block masking and filling of a batch, the vectorised implementation
   (:func:`brainmvp_components.transforms.masking.random_block_mask` +
   :func:`~brainmvp_components.transforms.masking.fill_masked`)
   against a straightforward per-sample, per-block Python loop, timed side by side in one run, with a check that
   both keep the same fraction of blocks and fill the same way.
2. ``step``: one full pre-training step (two masked views per single-modality target through the network, the
   two MSE reconstruction terms, InfoNCE, backward, AdamW step) per precision, for two variants side by side:
   ``baseline`` (what a straightforward research implementation does: per-block Python-loop masking, the two views
   as two separate forward passes, PyTorch's stock depthwise convolution backward, the default AdamW, no
   checkpointing) and ``ours`` (the engine's :func:`~brainmvp_components.engines.pretrain.compute_pretrain_losses`:
   vectorised masking, both views in one forward, the flipped-kernel depthwise input gradient of
   :mod:`brainmvp_components.networks.depthwise`, fused AdamW, optional checkpointing). Reported: wall time,
   peak memory, the ratios, and achieved FLOP/s against this machine's measured matmul peak. FLOPs are the
   network's forward counted on meta tensors (cross-checked by a per-module hand count) times 3 for forward +
   backward. Each variant runs in a fresh
   subprocess so its peak resident memory (``ru_maxrss``) is its own; on CUDA ``torch.cuda.max_memory_allocated``
   is used.

With ``--authors-repo PATH`` (a checkout of the authors' repository, shaohao011/BrainMVP; never vendored here) the
step part also runs variant ``authors``: their own pre-training step imported from ``PATH`` in its subprocess only
(their model, view building, losses and AdamW; see :func:`run_authors_step`), timed and measured the same way, and
the ratios ours / authors are printed. Their step takes ``--authors-batch`` cases (default 2, as their
``main.py``), picks one random modality for all of them and makes 2 views per case (template-filled and
partner-filled), so it runs ``2 x authors-batch`` views of ``1 x 96^3`` in fp32 (their step has no autocast); ours
runs ``2 x batch x modalities`` views, so the matched workload is ours at ``--batch 1 --modalities 2`` against
theirs at ``--authors-batch 2`` (4 views each, UniFormer-S, 96^3)::

    python scripts/benchmark_pretrain.py --part step --preset small --roi 96 --batch 1 --modalities 2 \\
        --precision fp32 --steps 0 --authors-repo /path/to/BrainMVP

Their code needs ``timm`` (and ``monai``), which this project does not install; without it the authors' row says
which package to install. Without ``--authors-repo`` only ``baseline`` and ``ours`` run.

Examples::

    python scripts/benchmark_pretrain.py --part masking
    python scripts/benchmark_pretrain.py --part step --preset tiny --roi 64 --batch 1 --modalities 2
    python scripts/benchmark_pretrain.py --part step --preset small --roi 96 --batch 2 --modalities 4 \\
        --precision bf16 --use-checkpoint --variants ours --steps 0 --rss-limit-gb 20

On CPU the vectorised fill is bound by page-faulting its fresh output; ``THP_MEM_ALLOC_ENABLE=1`` in the environment
(PyTorch's transparent-huge-page CPU allocation) reduces that for both sides of the masking comparison.
Results and the exact commands used are recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from brainmvp_components.benchmarks import harness
from brainmvp_components.benchmarks.harness import GIB, best_time, max_rss_bytes
from brainmvp_components.transforms.masking import block_grid, fill_masked, num_kept_blocks, random_block_mask

RESULT_TAG = "BENCHMARK_RESULT "
CHILD_FLAG = "--step-child"


# ---------------------------------------------------------------------------------------------- masking
def naive_mask_and_fill(
    x: torch.Tensor, fill: torch.Tensor, block_size: int, mask_ratio: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-sample, per-block loop that research code typically writes (the baseline being measured).

    For every volume a random permutation of the blocks is drawn, and each block past the kept ones is masked
    and filled by slice assignment. ``x`` and ``fill``: ``(N, 1, H, W, D)``.
    """
    out = x.clone()
    mask = torch.zeros(x.shape, dtype=torch.bool)
    grid = block_grid(x.shape[2:], block_size)
    num_blocks = grid[0] * grid[1] * grid[2]
    keep = num_kept_blocks(num_blocks, mask_ratio)
    for n in range(x.shape[0]):
        order = rng.permutation(num_blocks)
        for block in order[keep:]:
            i, j, k = np.unravel_index(block, grid)
            region = (
                n,
                slice(None),
                slice(i * block_size, (i + 1) * block_size),
                slice(j * block_size, (j + 1) * block_size),
                slice(k * block_size, (k + 1) * block_size),
            )
            out[region] = fill[region]
            mask[region] = True
    return out, mask


def vectorised_mask_and_fill(
    x: torch.Tensor, fill: torch.Tensor, block_size: int, mask_ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The library path: one batched random permutation, one ``torch.where``."""
    mask = random_block_mask(x.shape[0], x.shape[2:], block_size, mask_ratio, generator=generator, device=x.device)
    return fill_masked(x, mask, fill), mask


def benchmark_masking(args: argparse.Namespace) -> dict:
    roi = (args.mask_roi,) * 3
    volumes = args.mask_batch * args.mask_modalities
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(volumes, 1, *roi, generator=generator)
    fill = torch.rand(volumes, 1, *roi, generator=generator)
    rng = np.random.default_rng(0)

    vectorised_mask_and_fill(x, fill, args.block_size, args.mask_ratio, generator)  # warm-up
    t_vec = best_time(lambda: vectorised_mask_and_fill(x, fill, args.block_size, args.mask_ratio, generator), 5)
    t_loop = best_time(lambda: naive_mask_and_fill(x, fill, args.block_size, args.mask_ratio, rng), args.loop_repeats)

    out_vec, mask_vec = vectorised_mask_and_fill(x, fill, args.block_size, args.mask_ratio, generator)
    out_loop, mask_loop = naive_mask_and_fill(x, fill, args.block_size, args.mask_ratio, rng)
    kept_vec = (~mask_vec).flatten(1).float().mean(1)
    kept_loop = (~mask_loop).flatten(1).float().mean(1)
    grid = block_grid(roi, args.block_size)
    expected = num_kept_blocks(math.prod(grid), args.mask_ratio) / math.prod(grid)
    same_fraction = bool(torch.allclose(kept_vec, kept_loop) and torch.allclose(kept_vec, torch.tensor(expected)))
    same_fill = bool(torch.equal(out_loop, fill_masked(x, mask_loop, fill)))
    return {
        "volumes": f"{args.mask_batch} x {args.mask_modalities} x {args.mask_roi}^3",
        "blocks": f"{args.block_size}^3, r = {args.mask_ratio}",
        "loop_s": t_loop,
        "vectorised_s": t_vec,
        "speedup": t_loop / t_vec,
        "kept_fraction": expected,
        "same_kept_fraction": same_fraction,
        "same_fill_rule": same_fill and bool(torch.equal(out_vec, torch.where(mask_vec, fill, x))),
    }


def print_masking(result: dict) -> None:
    print("\n## Block masking and filling (best of repeated runs)\n")
    print(
        harness.table_header(
            ("volumes", "blocks", "per-block loop (s)", "vectorised (s)", "speed-up", "kept fraction", "both agree")
        )
    )
    agree = "yes" if result["same_kept_fraction"] and result["same_fill_rule"] else "NO"
    print(
        f"| {result['volumes']} | {result['blocks']} | {result['loop_s']:.3f} | {result['vectorised_s']:.4f} | "
        f"{result['speedup']:.1f}x | {result['kept_fraction']:.4f} | {agree} |"
    )


# ---------------------------------------------------------------------------------------------- peak
def measure_matmul_peak(device: torch.device, size: int) -> dict[str, float]:
    """Best-of-3 GFLOP/s of a ``size x size`` matmul in fp32 and bf16 on ``device``."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)

        def run(a=a, b=b):
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()

        run()
        peaks[name] = 2 * size**3 / best_time(run, 3) / 1e9
    return peaks


# ---------------------------------------------------------------------------------------------- FLOPs
def count_forward_gflop(preset: str, roi: int) -> dict[str, float]:
    """Forward GFLOP of the pre-training network on one single-channel ``roi^3`` view, counted two ways.

    ``counter``: :class:`torch.utils.flop_counter.FlopCounterMode` over a forward on meta tensors (no data, no
    time; on meta, attention decomposes into two batched matmuls, which the counter sees, whereas the CPU
    flash-attention kernel is not counted on real tensors). ``hand``: per-module formulas from forward hooks:
    ``2 x outputs x in_channels / groups x kernel volume`` per convolution (transposed: per input), ``2 x outputs x
    in_features`` per linear layer, ``4 x N^2 x C`` per self-attention (``q k^T`` and ``attn v``). Counting the
    backward with the counter over-counts grouped 3-D convolutions, so the step is reported by the usual
    convention, ``3 x forward`` (grad-input and grad-weight each cost one forward).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from brainmvp_components.networks.pretrain import brainmvp_pretrain_model

    model = brainmvp_pretrain_model(preset).to("meta").train()
    x = torch.empty(1, 1, roi, roi, roi, device="meta")
    hand = [0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.ConvTranspose3d):
            hand[0] += 2 * inputs[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, torch.nn.Conv3d):
            hand[0] += 2 * output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, torch.nn.Linear):
            hand[0] += 2 * output.numel() * module.in_features
        elif type(module).__name__ == "MultiHeadSelfAttention":
            b, n, c = inputs[0].shape
            hand[0] += 4 * b * n * n * c

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {"counter": counter.get_total_flops() / 1e9, "hand": hand[0] / 1e9}


# ---------------------------------------------------------------------------------------------- step
def loop_block_mask(
    n: int, roi: tuple[int, ...], block_size: int, mask_ratio: float, rng: np.random.Generator
) -> torch.Tensor:
    """Baseline mask: per volume a random permutation of the blocks, one slice assignment per masked block."""
    mask = torch.zeros(n, 1, *roi)
    grid = block_grid(roi, block_size)
    num_blocks = math.prod(grid)
    keep = num_kept_blocks(num_blocks, mask_ratio)
    for v in range(n):
        for block in rng.permutation(num_blocks)[keep:]:
            i, j, k = np.unravel_index(block, grid)
            mask[
                v,
                :,
                i * block_size : (i + 1) * block_size,
                j * block_size : (j + 1) * block_size,
                k * block_size : (k + 1) * block_size,
            ] = 1.0
    return mask


def baseline_losses(
    network,
    images,
    modality_index,
    partner,
    affine,
    *,
    mask_ratio,
    block_size,
    contrastive_loss,
    rng,
    md_weight=10.0,
    cmr_weight=1.0,
    cl_weight=1.0,
):
    """The same losses as the engine, written the straightforward way (the baseline being measured).

    A per-volume, per-block Python loop builds the mask, each view is ``x * (1 - m) + fill * m``, and the two views
    go through the network as two separate forward passes.
    """
    batch, k = images.shape[:2]
    roi = tuple(images.shape[2:])
    n = batch * k
    target = images.reshape(n, 1, *roi)
    templates = network.templates
    fill_a = templates.crop(templates.indices_for(modality_index.reshape(-1)), affine.repeat_interleave(k, 0), roi)
    own = torch.arange(n, device=images.device).view(batch, k)
    partner_rows = torch.where(partner >= 0, partner + own[:, :1], own).reshape(-1)
    fill_b = torch.where((partner < 0).reshape(n, 1, 1, 1, 1), fill_a, target[partner_rows])
    mask = loop_block_mask(n, roi, block_size, mask_ratio, rng).to(images.device)
    rec_a, features_a = network(target * (1 - mask) + fill_a * mask)
    rec_b, features_b = network(target * (1 - mask) + fill_b * mask)
    loss_md = torch.nn.functional.mse_loss(rec_a.float(), target)
    loss_cmr = torch.nn.functional.mse_loss(rec_b.float(), target)
    loss_cl = contrastive_loss(features_a.float(), features_b.float())
    return {"loss": md_weight * loss_md + cmr_weight * loss_cmr + cl_weight * loss_cl}


def synthetic_batch(
    batch: int, modalities: int, side: int, device: torch.device, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random pre-training batch shaped like the bundle's: ``(images, modality_index, partner, affine)``.

    ``images`` ``(B, K, side, side, side)``; targets ``t1, t1c, t2, flair, ...`` per case, each target's partner
    the next one (``-1`` with a single target); ``affine`` ``(B, 4, 4)`` places each crop at a random voxel
    offset inside the atlas grid (the templates' grid).
    """
    from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE, BRATS_ATLAS_SHAPE

    k = modalities
    images = torch.rand(batch, k, side, side, side, generator=generator).to(device)
    modality_index = (torch.arange(k) % 4).repeat(batch, 1).to(device)
    partner = ((torch.arange(k) + 1) % k if k > 1 else torch.full((1,), -1)).repeat(batch, 1).to(device)
    room = torch.tensor([max(n - side, 1) for n in BRATS_ATLAS_SHAPE], dtype=torch.float64)
    offsets = (torch.rand(batch, 3, generator=generator, dtype=torch.float64) * room).floor()
    affine = torch.as_tensor(BRATS_ATLAS_AFFINE).repeat(batch, 1, 1)
    affine[:, :3, 3] += (affine[:, :3, :3] @ offsets[..., None])[..., 0]
    return images, modality_index, partner, affine


def run_step(cfg: dict) -> dict:
    """One variant of the step benchmark (runs inside a fresh subprocess)."""
    from brainmvp_components.engines.pretrain import compute_pretrain_losses
    from brainmvp_components.losses.contrastive import InfoNCELoss
    from brainmvp_components.networks.depthwise import DepthwiseConv3d
    from brainmvp_components.networks.pretrain import brainmvp_pretrain_model

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        harness.rss_watchdog(cfg["rss_limit_gb"], RESULT_TAG)
    ours = cfg["variant"] == "ours"
    torch.manual_seed(0)
    model = brainmvp_pretrain_model(cfg["preset"], use_checkpoint=cfg["use_checkpoint"]).to(device).train()
    if not ours:  # the straightforward step also uses PyTorch's stock depthwise convolution backward
        for module in model.modules():
            if isinstance(module, DepthwiseConv3d):
                module.__class__ = torch.nn.Conv3d
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-5, fused=True if ours else None)
    contrastive = InfoNCELoss(temperature=1.0)

    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    images, modality_index, partner, affine = synthetic_batch(
        cfg["batch"], cfg["modalities"], cfg["roi"], device, generator
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16")
    common = {"mask_ratio": 0.8, "block_size": 8, "contrastive_loss": contrastive}

    def losses():
        if ours:
            return compute_pretrain_losses(
                model, images, modality_index, partner, affine, generator=generator, **common
            )
        return baseline_losses(model, images, modality_index, partner, affine, rng=rng, **common)

    def loss_fn() -> torch.Tensor:
        with autocast:
            return losses()["loss"]

    result = time_steps(loss_fn, optimizer, device, cfg["steps"])
    result["parameters_m"] = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("templates")) / 1e6
    return result


def time_steps(
    loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, device: torch.device, steps: int
) -> dict:
    """Time training steps of ``loss_fn`` (forward + losses, returning the loss) the same way for every variant.

    One warm-up step, then ``steps`` timed ones (``0``: the first step itself), each ``optimizer.zero_grad()``,
    ``loss_fn()``, ``loss.backward()``, ``optimizer.step()`` with a device synchronisation after each phase; the
    fastest is reported with the peak memory (process max RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA)
    and its growth over the state before the first step.
    """

    def sync():
        harness.sync(device)

    def step() -> tuple[float, list[float]]:
        """One training step: ``(loss, [forward + losses, backward, optimizer] seconds)``."""
        marks = [time.perf_counter()]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        sync()
        marks.append(time.perf_counter())
        loss.backward()
        sync()
        marks.append(time.perf_counter())
        optimizer.step()
        sync()
        marks.append(time.perf_counter())
        return float(loss.detach()), [b - a for a, b in zip(marks[:-1], marks[1:])]

    baseline = max_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    first = step()
    timed = [step() for _ in range(steps)] or [first]  # --steps 0: time the first step itself
    loss, phases = min(timed, key=lambda t: sum(t[1]))
    peak = harness.peak_memory_bytes(device)
    return {
        "device": harness.device_name(device),
        "memory_kind": harness.memory_kind(device),
        "step_s": sum(phases),
        "phases_s": phases,
        "peak_gib": peak / GIB,
        "delta_gib": (peak - baseline) / GIB,
        "loss": loss,
    }


# ---------------------------------------------------------------------------------------------- authors' step
AUTHORS_ROI = 96  # their utils/ops.py crops 96^3 template patches (hard-coded), so their step runs at 96^3 only
AUTHORS_MODALITIES = ("t1", "t1c", "t2", "flair")  # the four modalities of a BraTS case in their data


def authors_missing_package(repo: str, module: str) -> str:
    """One line naming the package that provides ``module`` (imported by the authors' code, absent here), with
    the version pinned in their ``requirements.txt`` when it pins one."""
    package = {"distutils": "setuptools"}.get(module.split(".")[0], module.split(".")[0])
    pin = package
    requirements = os.path.join(repo, "requirements.txt")
    if os.path.isfile(requirements):
        with open(requirements) as f:
            pins = [line.strip() for line in f if line.lower().startswith(f"{package.lower()}==")]
        pin = f"{pins[0]} (pinned in their requirements.txt)" if pins else package
    return f"the authors' code needs the package {package!r}, which is not installed: pip install {pin}"


def run_authors_step(cfg: dict) -> dict:
    """The authors' pre-training step, run from their own code (inside a fresh subprocess).

    ``cfg["authors_repo"]`` (a checkout of their repository) goes to the front of ``sys.path`` in this process
    only. The model is their ``models.Uniformer.RecModel(args, dim=512)``: UniFormer-S encoder, skip-free decoder
    and ``rep_template`` (8 x 240 x 240 x 155, zero-initialised), with the arguments of their ``do_pretrain.sh``
    (8 templates, mask rate 0.8, 8^3 blocks, lr 3e-4, contrastive loss from epoch 1000) and their ``main.py``
    defaults (1 input channel, 96^3, weight decay 1e-5, 2 accumulation steps, fp32: ``--noamp`` is inverted there,
    so AMP is off and their loop never uses its ``GradScaler``). Its ``forward`` is their step: both views built by
    their ``utils.ops.aug_rand_with_learnable_rep`` (one random modality per step; per case a template-filled and a
    partner-filled view, a per-block ``torch.randperm`` mask each), one encoder pass over the ``2 x batch`` views,
    their decoder, ``10 x MSE + MSE + Contrast_Loss`` (InfoNCE, temperature 1).

    The glue is their ``main.py`` ``train_epoch``, which cannot be imported (it does not compile at their HEAD
    a466bb2: an inconsistent indent at ``if scheduler:``): random data of their batch's shape (``batch x 4
    modalities x 96^3``, series names, template start points inside the template grid), ``random.randint`` for the
    modality, ``cur_epoch = 1000`` (partner fill and contrastive loss both on, as in the paper's second phase),
    ``loss / accumulation_steps``, their ``AdamW(lr, weight_decay)``, one optimizer step per step. Single process:
    their 4-GPU DDP wrapper (SyncBatchNorm, ``find_unused_parameters``) is left out. ``cudnn.benchmark`` is on
    as their ``set_seed`` sets it; autograd anomaly detection, which their ``main`` switches on, only with
    ``cfg["detect_anomaly"]`` (a debugging aid that slows their step).
    """
    repo = os.path.abspath(cfg["authors_repo"])
    sys.path.insert(0, repo)
    try:
        from models.Uniformer import RecModel
    except ModuleNotFoundError as error:
        return {"error": authors_missing_package(repo, error.name or str(error))}

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        harness.rss_watchdog(cfg["rss_limit_gb"], RESULT_TAG)
    torch.backends.cudnn.benchmark = True
    torch.autograd.set_detect_anomaly(cfg["detect_anomaly"])
    random.seed(0)
    torch.manual_seed(0)
    args = argparse.Namespace(
        device=str(device),
        in_channels=1,
        roi_x=AUTHORS_ROI,
        roi_y=AUTHORS_ROI,
        roi_z=AUTHORS_ROI,
        initial_checkpoint="",
        template_index=["flair", "t1", "t1c", "t2", "mra", "pd", "dwi", "adc"],
        dst_h=240,
        dst_w=240,
        dst_d=155,
        mask_rate=0.8,
        mask_block_size=8,
        start_epoch=1000,
        accumulation_steps=2,
        lr=3e-4,
        decay=1e-5,
    )
    model = RecModel(args, dim=512).to(args.device).train()
    optimizer = torch.optim.AdamW(params=model.parameters(), lr=args.lr, weight_decay=args.decay)

    batch = cfg["batch"]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, len(AUTHORS_MODALITIES), *(AUTHORS_ROI,) * 3, generator=generator).to(args.device)
    series_name = [",".join(AUTHORS_MODALITIES)] * batch  # what their loader collates: one string per case
    rearranged_series = [",".join(name.split(",")[i] for name in series_name) for i in range(len(AUTHORS_MODALITIES))]
    room = torch.tensor([args.dst_h, args.dst_w, args.dst_d]) - AUTHORS_ROI + 1
    rep_start_point = (torch.rand(batch, 3, generator=generator) * room).floor()

    def loss_fn() -> torch.Tensor:
        cur_modal = random.randint(0, x.shape[1] - 1)
        loss, *_ = model(
            x,
            args=args,
            index=cur_modal,
            rep_start_point=rep_start_point,
            rearranged_series=rearranged_series,
            cur_epoch=args.start_epoch,
            series_name=series_name,
        )
        return loss / args.accumulation_steps

    result = time_steps(loss_fn, optimizer, device, cfg["steps"])
    # their decoder also holds weights its pre-training forward never uses (conv_block, proj1): count the trained ones
    trained = [p for n, p in model.named_parameters() if n != "rep_template" and p.grad is not None]
    result["parameters_m"] = sum(p.numel() for p in trained) / 1e6
    return result


def benchmark_steps(args: argparse.Namespace) -> list[dict]:
    """Run every configuration in its own subprocess; the authors' step (fp32 only) last, after ours."""
    common = {"steps": args.steps, "threads": args.threads, "rss_limit_gb": args.rss_limit_gb}
    configs = [
        {
            "variant": variant,
            "preset": args.preset,
            "roi": args.roi,
            "batch": args.batch,
            "modalities": args.modalities,
            "precision": precision,
            "use_checkpoint": args.use_checkpoint and variant == "ours",
            **common,
        }
        for precision in args.precision
        for variant in args.variants
    ]
    if args.authors_repo:
        configs.append(
            {
                "variant": "authors",
                "authors_repo": os.path.abspath(args.authors_repo),
                "preset": "small",
                "roi": AUTHORS_ROI,
                "batch": args.authors_batch,
                "modalities": 1,
                "precision": "fp32",
                "use_checkpoint": False,
                "detect_anomaly": args.authors_detect_anomaly,
                **common,
            }
        )
    results = []
    for cfg in configs:
        print(f"running step benchmark: {json.dumps(cfg)}", flush=True)
        results.append(harness.run_child(__name__, CHILD_FLAG, cfg, RESULT_TAG))
    return results


STEP_COLUMNS = (
    "variant", "precision", "checkpointing", "AdamW", "step (s)", "forward / backward / optimizer (s)",
    "peak memory (GiB)", "over pre-step state (GiB)", "GFLOP/s", "% of matmul peak",
)  # fmt: skip


def print_steps(
    args: argparse.Namespace,
    results: list[dict],
    peaks: dict[str, float],
    flops: dict,
    authors_flops: dict | None = None,
) -> None:
    """The step table and the ratios; ``authors_flops``: the forward count of UniFormer-S at 96^3 (the authors'
    network, whose layout ``brainmvp_pretrain_model("small")`` reproduces) for the authors' rows."""
    views = 2 * args.batch * args.modalities
    step_gflop = 3 * flops["counter"] * views
    print(
        f"\n## Pre-training step: {args.preset} preset, {args.roi}^3, {args.batch} cases x {args.modalities} "
        f"modalities = {views} views\n"
    )
    print(
        f"forward per view: {flops['counter']:.1f} GFLOP (FlopCounterMode), {flops['hand']:.1f} GFLOP (hand count); "
        f"step = 3 x forward x {views} views = {step_gflop / 1e3:.2f} TFLOP (recomputation not counted); at the "
        f"measured matmul peak that is at least {step_gflop / peaks['fp32']:.1f} s fp32, "
        f"{step_gflop / peaks['bf16']:.1f} s bf16\n"
    )
    matched = args.preset == "small" and args.roi == AUTHORS_ROI and 2 * args.authors_batch == views
    if args.authors_repo:
        note = (
            ""
            if matched
            else "; NOT the matched workload: ours needs --preset small, batch x modalities = authors' batch"
        )
        print(
            f"authors' step (their code from {args.authors_repo}): UniFormer-S, {AUTHORS_ROI}^3, "
            f"{args.authors_batch} cases x 1 random modality x 2 views = {2 * args.authors_batch} views, fp32{note}\n"
        )
    print(harness.table_header(STEP_COLUMNS))
    for r in results:
        head = (
            f"| {r['variant']} | {r['precision']} | {'on' if r['use_checkpoint'] else 'off'} | "
            f"{'fused' if r['variant'] == 'ours' else 'default'} |"
        )
        if "error" in r:
            print(f"{head} {r['error']} | | | | | |")
            continue
        if r["variant"] == "authors":
            achieved = 3 * authors_flops["counter"] * 2 * r["batch"] / r["step_s"]
        else:
            achieved = step_gflop / r["step_s"]
        phases = " / ".join(f"{t:.2f}" for t in r["phases_s"])
        print(
            f"{head} {r['step_s']:.2f} | {phases} | {r['peak_gib']:.2f} | {r['delta_gib']:.2f} | {achieved:.1f} | "
            f"{100 * achieved / peaks[r['precision']]:.0f}% |"
        )
    done = {(r["variant"], r["precision"]): r for r in results if "error" not in r}
    for precision in args.precision:
        base, ours = done.get(("baseline", precision)), done.get(("ours", precision))
        if base and ours:
            ratio = harness.ratio(base, ours, ("step_s", "peak_gib", "delta_gib"))
            print(
                f"\nbaseline / ours, {precision}: step time {ratio['step_s']:.2f}x, "
                f"peak memory {ratio['peak_gib']:.2f}x, "
                f"growth over pre-step state {ratio['delta_gib']:.2f}x"
            )
    authors = done.get(("authors", "fp32"))
    for precision in args.precision:
        ours = done.get(("ours", precision))
        if authors and ours:
            ratio = harness.ratio(ours, authors, ("step_s", "peak_gib", "delta_gib"))
            print(
                f"\nours ({precision}) / authors (fp32), {'matched' if matched else 'NOT the matched'} workload: "
                f"step time {ratio['step_s']:.2f}x, peak memory {ratio['peak_gib']:.2f}x, "
                f"growth over pre-step state {ratio['delta_gib']:.2f}x (below 1: ours is less)"
            )
    if done:
        first = next(iter(done.values()))
        print(f"\ndevice {first['device']}; memory = {first['memory_kind']}")
        for variant in ("baseline", "ours", "authors"):
            r = next((r for r in done.values() if r["variant"] == variant), None)
            if r:
                print(f"{variant}: network {r['parameters_m']:.1f} M parameters (+ templates)")


# ---------------------------------------------------------------------------------------------- main
def run_child_config(cfg: dict) -> dict:
    """One configuration of :func:`benchmark_steps`, in its subprocess."""
    return run_authors_step(cfg) if cfg["variant"] == "authors" else run_step(cfg)


def run(args: argparse.Namespace) -> None:
    """Both parts as ``args`` (``scripts/benchmark_pretrain.py``'s arguments) ask."""
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, command: {' '.join(sys.argv)}")
    if args.part in ("masking", "all"):
        print_masking(benchmark_masking(args))
    if args.part in ("step", "all"):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        peaks = measure_matmul_peak(device, args.peak_size)
        print(f"\nmatmul peak ({args.peak_size}^2): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
        flops = count_forward_gflop(args.preset, args.roi)
        authors_flops = count_forward_gflop("small", AUTHORS_ROI) if args.authors_repo else None
        print_steps(args, benchmark_steps(args), peaks, flops, authors_flops)


if __name__ == "__main__":
    sys.exit(harness.child_main(sys.argv[1:], CHILD_FLAG, run_child_config, RESULT_TAG))
