"""CUDA check of the BrainMVP pre-training step at the authors' configuration, for a lent GPU machine.

Runs, in turn, the parts named by ``--parts`` (all by default); each part is guarded, so a failing one is reported
and the others still run:

* ``env``: torch, CUDA, cuDNN and NCCL versions, the device, its memory, bf16 support (always run);
* ``matmul``: ``8192^2`` matmul rate in fp32 with TF32 off, with TF32 on, and in bf16 (TFLOP/s), the ceilings
  that the steps are compared with (:func:`~brainmvp_components.benchmarks.pretrain_step.measure_matmul_peak`);
* ``fp32``, ``tf32``, ``bf16``, ``fp16``: one pre-training step at the recipe of
  ``bundles/brainmvp_pretrain/configs/train.json`` (3 cases x 4 single-modality targets, 96^3 crops, UniFormer-S,
  both views in one forward, InfoNCE on, AdamW ``fused=True`` with the bundle's parameter groups) through
  :func:`brainmvp_components.engines.pretrain.compute_pretrain_losses`: fp32 with TF32 off (matmul and cuDNN),
  fp32 with TF32 on, autocast bf16, autocast fp16 with a ``GradScaler`` (what the bundle's ``amp: true`` does on
  CUDA). The AMP parts keep torch's default TF32 flags (as the bundle does);
* ``checkpoint``: the bf16 step with the encoder's activation checkpointing on;
* ``nccl``: a process group of one (``nccl``, ``tcp://127.0.0.1:<free port>``), the model in
  ``DistributedDataParallel``, timed bf16 steps, then one step whose InfoNCE takes its cross-rank gather branch
  (``_gather_with_grad``, an autograd ``all_gather`` over NCCL; with one rank the loss takes that branch only
  when the world size it reads is forced above 1, which this part does) and is checked against the loss without
  the gather;
* ``inference``: whole-volume segmentation with the segmentation bundle's network through eager float32, float16
  and bfloat16 autocast, ONNX Runtime's CUDA provider and TensorRT (each where installed), timed, with the Dice of
  each one's labels against float32's (:mod:`~brainmvp_components.benchmarks.gpu_inference`);
* ``compile``: the bf16 step with ``torch.compile`` of the network, in a subprocess with a time budget
  (``--compile-budget``): compile time (first step), then step time after warm-up. It runs last, being the slow one.

Each step part reports: the median (and range) of ``--steps`` timed steps after ``--warmup`` warm-up steps, each
bracketed by ``torch.cuda.synchronize()``; ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (reset
between parts, everything of the previous part freed); and the achieved TFLOP/s with the analytic count of
``scripts/benchmark_pretrain.py`` (``3 x forward FLOP x 2 views x B x K``, recomputation not counted), also as a
percentage of the matching matmul rate. Figures are printed as they come; a JSON of everything is rewritten after
every part to ``$OUT/gpu_check.json`` when ``OUT`` is set, else ``./gpu_check.json`` (``--json`` overrides).

Run by ``scripts/gpu_check.py`` (its docstring has examples and the exit status; ``scripts/gpu_check.sh`` first
prepares the environment).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from brainmvp_components.benchmarks import harness
from brainmvp_components.benchmarks.harness import GIB

REPO_ROOT = harness.PACKAGE_ROOT
TRAIN_CONFIG = REPO_ROOT / "bundles" / "brainmvp_pretrain" / "configs" / "train.json"
PARTS: tuple[str, ...] = (
    "env", "matmul", "fp32", "tf32", "bf16", "fp16", "checkpoint", "nccl", "inference", "compile"
)  # fmt: skip
STEP_PARTS: dict[str, dict[str, Any]] = {
    # precision name -> autocast dtype name, TF32 setting (None: torch's defaults), gradient scaler, checkpointing
    "fp32": {"autocast": None, "tf32": False, "scaler": False, "checkpoint": False},
    "tf32": {"autocast": None, "tf32": True, "scaler": False, "checkpoint": False},
    "bf16": {"autocast": "bfloat16", "tf32": None, "scaler": False, "checkpoint": False},
    "fp16": {"autocast": "float16", "tf32": None, "scaler": True, "checkpoint": False},
    "checkpoint": {"autocast": "bfloat16", "tf32": None, "scaler": False, "checkpoint": True},
}
RESULT_TAG = "GPU_CHECK_RESULT "
CHILD_FLAG = "--compile-child"
NO_CUDA_MESSAGE = (
    "gpu_check: no CUDA device is visible to torch {version} (CUDA build {cuda}); this check needs an NVIDIA GPU "
    "(use --dry-run-cpu for a CPU smoke run of the same code)"
)


class PartTimeout(Exception):
    """A part ran past ``--part-timeout``."""


# ---------------------------------------------------------------------------------------------- set-up
def load_benchmark() -> Any:
    """:mod:`~brainmvp_components.benchmarks.pretrain_step`: its matmul-rate and FLOP-count functions are reused
    here (imported when first needed: it imports torch, which this module does not at import)."""
    from brainmvp_components.benchmarks import pretrain_step

    return pretrain_step


def load_recipe(path: Path = TRAIN_CONFIG) -> dict[str, Any]:
    """The authors' recipe as the pre-training bundle states it (literal values of ``train.json``)."""
    config = json.loads(path.read_text())

    def number(key: str) -> float:
        value = config[key]
        if isinstance(value, str) and value.startswith("@"):  # a plain reference to another literal
            value = config[value[1:]]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{path}: {key} is not a literal number ({value!r})")
        return value

    return {
        "preset": config["preset"],
        "roi": int(config["roi_size"][0]),
        "batch": int(number("batch_size")),
        "modalities": int(number("modalities_per_case")),
        "learning_rate": number("learning_rate"),
        "weight_decay": number("weight_decay"),
        "template_learning_rate": number("template_learning_rate"),
        "template_weight_decay": number("template_weight_decay"),
        "template_range_floor": number("template_range_floor"),
        "mask_ratio": number("mask_ratio"),
        "block_size": int(number("block_size")),
        "md_weight": number("md_weight"),
        "cmr_weight": number("cmr_weight"),
        "cl_weight": number("cl_weight"),
        "temperature": number("contrastive_temperature"),
        "gradient_accumulation_steps": int(number("gradient_accumulation_steps")),
    }


@dataclass
class Context:
    """What every part needs: the arguments, the device, the recipe and the figures gathered so far."""

    args: argparse.Namespace
    device: Any  # torch.device
    recipe: dict[str, Any]
    bench: Any
    results: dict[str, Any]
    step_gflop: float | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def say(message: str) -> None:
    print(message, flush=True)


def set_tf32(enabled: bool | None) -> dict[str, bool]:
    """Set TF32 for matmul and cuDNN (``None``: torch's defaults, matmul off and cuDNN on); returns the flags."""
    import torch

    matmul, cudnn = (False, True) if enabled is None else (enabled, enabled)
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn
    return {"tf32_matmul": matmul, "tf32_cudnn": cudnn}


def _free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@contextlib.contextmanager
def part_deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`PartTimeout` in this (main) thread after ``seconds`` (0: no limit)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise PartTimeout(f"ran past its {seconds:.0f} s limit (--part-timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------- the step
@dataclass
class Batch:
    """A synthetic batch shaped like the bundle's: ``(B, K, H, W, D)`` crops, modalities, partners, affines."""

    images: Any
    modality_index: Any
    partner: Any
    affine: Any
    generator: Any


def make_batch(batch: int, modalities: int, side: int, device: Any, seed: int = 0) -> Batch:
    """The step benchmark's synthetic batch (:func:`~.pretrain_step.synthetic_batch`) with its generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return Batch(*load_benchmark().synthetic_batch(batch, modalities, side, device, generator), generator)


def build_model(ctx: Context, use_checkpoint: bool = False) -> tuple[Any, Any]:
    """The pre-training network and its fused AdamW, as ``train.json`` builds them (``network_def``, ``optimizer``)."""
    import torch

    from brainmvp_components.networks.pretrain import brainmvp_pretrain_model

    r = ctx.recipe
    torch.manual_seed(0)
    model = brainmvp_pretrain_model(
        ctx.args.preset, use_checkpoint=use_checkpoint, template_range_floor=r["template_range_floor"]
    )
    model = model.to(ctx.device).train()
    groups = model.parameter_groups(r["learning_rate"], r["template_learning_rate"], r["template_weight_decay"])
    optimizer = torch.optim.AdamW(groups, lr=r["learning_rate"], weight_decay=r["weight_decay"], fused=True)
    return model, optimizer


def make_step(
    ctx: Context,
    network: Any,
    optimizer: Any,
    batch: Batch,
    autocast: str | None,
    scaler: Any = None,
    contrastive: Any = None,
) -> Callable[[], dict[str, Any]]:
    """One training step of the bundle's trainer: losses under autocast, (scaled) backward, optimizer step."""
    import torch

    from brainmvp_components.engines.pretrain import compute_pretrain_losses
    from brainmvp_components.losses.contrastive import InfoNCELoss

    r = ctx.recipe
    contrastive = contrastive if contrastive is not None else InfoNCELoss(temperature=r["temperature"])
    dtype = getattr(torch, autocast) if autocast else None
    weights = {k: r[k] for k in ("mask_ratio", "block_size", "md_weight", "cmr_weight", "cl_weight")}

    def step() -> dict[str, Any]:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None):
            out = compute_pretrain_losses(
                network,
                batch.images,
                batch.modality_index,
                batch.partner,
                batch.affine,
                contrastive_loss=contrastive,
                generator=batch.generator,
                **weights,
            )
        loss = out["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return out

    return step


def time_steps(
    ctx: Context, step: Callable[[], dict[str, Any]], warmup: int, steps: int, label: str, rate: str = "bf16"
) -> dict[str, Any]:
    """``warmup`` untimed and ``steps`` timed steps, each bracketed by a device synchronisation; ``rate``: the
    matmul rate (``fp32``, ``tf32``, ``bf16``) the achieved FLOP/s is compared with."""
    import torch

    times: list[float] = []
    warm: list[float] = []
    loss = None
    for i in range(warmup + steps):
        harness.sync(ctx.device)
        start = time.perf_counter()
        out = step()
        harness.sync(ctx.device)
        elapsed = time.perf_counter() - start
        loss = float(out["loss"].detach())
        (warm if i < warmup else times).append(elapsed)
        if i < warmup:
            say(f"  [{label}] warm-up step {i + 1}: {elapsed:.3f} s, loss {loss:.4f}")
    times = times or warm[-1:]
    median = statistics.median(times)
    result: dict[str, Any] = {
        "warmup": warmup,
        "steps": len(times),
        "warmup_s": warm,
        "step_s_all": times,
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "loss": loss,
        "finite": loss is not None and math.isfinite(loss),
    }
    if ctx.cuda:
        result["max_allocated_gib"] = torch.cuda.max_memory_allocated(ctx.device) / GIB
        result["max_reserved_gib"] = torch.cuda.max_memory_reserved(ctx.device) / GIB
    if ctx.step_gflop:
        result["tflops"] = ctx.step_gflop / median / 1e3
        peak = ctx.results.get("matmul", {}).get("tflops", {}).get(rate)
        if peak:
            result["percent_of_matmul"] = 100 * result["tflops"] / peak
    return result


def describe(label: str, r: dict[str, Any]) -> str:
    text = (
        f"[{label}] step {r['step_s_median']:.3f} s (median of {r['steps']}; {r['step_s_min']:.3f}-"
        f"{r['step_s_max']:.3f})"
    )
    if "tflops" in r:
        text += f", {r['tflops']:.1f} TFLOP/s"
        if "percent_of_matmul" in r:
            text += f" ({r['percent_of_matmul']:.0f}% of the matmul rate)"
    if "max_allocated_gib" in r:
        text += f", max allocated {r['max_allocated_gib']:.2f} GiB, max reserved {r['max_reserved_gib']:.2f} GiB"
    return text + f", loss {r['loss']:.4f}{'' if r['finite'] else ' (NOT FINITE)'}"


# ---------------------------------------------------------------------------------------------- parts
def _nccl_version() -> str | None:
    try:
        import torch.cuda.nccl as nccl

        version = nccl.version()
    except Exception:  # noqa: BLE001 - a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def part_env(ctx: Context) -> dict[str, Any]:
    import monai
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "monai": monai.__version__,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(ctx.device),
    }
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(
            {
                "device_name": props.name,
                "device_count": torch.cuda.device_count(),
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "total_memory_gib": props.total_memory / GIB,
                "bf16_supported": torch.cuda.is_bf16_supported(),
                "nccl": _nccl_version(),
                "tf32_defaults": {
                    "matmul": torch.backends.cuda.matmul.allow_tf32,
                    "cudnn": torch.backends.cudnn.allow_tf32,
                },
            }
        )
    else:
        info["threads"] = torch.get_num_threads()
    for key, value in info.items():
        say(f"  {key}: {value}")
    return info


def part_matmul(ctx: Context) -> dict[str, Any]:
    size = ctx.args.matmul_size
    set_tf32(False)
    ieee = ctx.bench.measure_matmul_peak(ctx.device, size)
    set_tf32(True)
    tf32 = ctx.bench.measure_matmul_peak(ctx.device, size)
    set_tf32(None)
    rates = {"fp32": ieee["fp32"] / 1e3, "tf32": tf32["fp32"] / 1e3, "bf16": max(ieee["bf16"], tf32["bf16"]) / 1e3}
    say(
        f"  [matmul {size}^2] fp32 (TF32 off) {rates['fp32']:.1f}, TF32 {rates['tf32']:.1f}, bf16 {rates['bf16']:.1f} "
        "TFLOP/s (best of 3)"
    )
    return {"size": size, "tflops": rates}


def part_step(ctx: Context, label: str) -> dict[str, Any]:
    """One of the ``STEP_PARTS`` at the configuration of the arguments."""
    import torch

    spec = STEP_PARTS[label]
    autocast = None if ctx.args.dry_run_cpu else spec["autocast"]  # the CPU dry run is fp32 throughout
    flags = set_tf32(spec["tf32"])
    model, optimizer = build_model(ctx, use_checkpoint=spec["checkpoint"])
    scaler = torch.amp.GradScaler(ctx.device.type) if spec["scaler"] and autocast else None
    batch = make_batch(ctx.args.batch, ctx.args.modalities, ctx.args.roi, ctx.device)
    step = make_step(ctx, model, optimizer, batch, autocast, scaler)
    _free_memory(ctx.device)
    allocated_before = torch.cuda.memory_allocated(ctx.device) / GIB if ctx.cuda else None
    rate = "bf16" if autocast else ("tf32" if spec["tf32"] else "fp32")
    try:
        result = time_steps(ctx, step, ctx.args.warmup, ctx.args.steps, label, rate)
    finally:
        set_tf32(None)
    result.update(flags)
    result.update(
        {
            "autocast": autocast,
            "grad_scaler": scaler is not None,
            "checkpointing": spec["checkpoint"],
            "optimizer": "AdamW(fused=True)",
            "allocated_before_gib": allocated_before,
        }
    )
    if scaler is not None:
        result["grad_scale"] = scaler.get_scale()
    say(describe(label, result))
    del model, optimizer, scaler, batch, step
    return result


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_nccl(ctx: Context) -> dict[str, Any]:
    """A one-process group, the DDP-wrapped model, timed steps, and one step through InfoNCE's gather branch."""
    from unittest import mock

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from brainmvp_components.losses import contrastive as contrastive_module

    backend = "nccl" if ctx.cuda else "gloo"
    autocast = "bfloat16" if ctx.cuda else None
    port = _free_port()
    start = time.perf_counter()
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=120),
        **({"device_id": ctx.device} if ctx.cuda else {}),
    )
    result: dict[str, Any] = {"backend": backend, "init_s": time.perf_counter() - start, "port": port}
    say(f"  [nccl] {backend} group of 1 on tcp://127.0.0.1:{port} in {result['init_s']:.2f} s")
    try:
        probe = torch.ones(4, device=ctx.device)
        dist.all_reduce(probe)
        result["all_reduce_ok"] = bool(torch.all(probe == 1))
        model, optimizer = build_model(ctx)
        ddp = DistributedDataParallel(model, device_ids=[ctx.device.index or 0] if ctx.cuda else None)
        batch = make_batch(ctx.args.batch, ctx.args.modalities, ctx.args.roi, ctx.device)
        _free_memory(ctx.device)
        step = make_step(ctx, ddp, optimizer, batch, autocast)
        rate = "bf16" if autocast else "fp32"
        result.update(time_steps(ctx, step, 1, max(1, min(ctx.args.steps, 3)), "nccl", rate))
        result["autocast"] = autocast
        say(describe("nccl", result))

        # one step whose InfoNCE gathers the contrastive features over the group (its distributed branch)
        calls: list[tuple[int, ...]] = []
        gather = contrastive_module._gather_with_grad

        def counted_gather(x):
            calls.append(tuple(x.shape))
            return gather(x)

        loss_fn = contrastive_module.InfoNCELoss(temperature=ctx.recipe["temperature"], gather_distributed=True)
        with (
            mock.patch.object(contrastive_module, "_gather_with_grad", counted_gather),
            mock.patch.object(contrastive_module, "_distributed_world", lambda: (dist.get_rank(), 2)),
        ):
            out = make_step(ctx, ddp, optimizer, batch, autocast, contrastive=loss_fn)()
        harness.sync(ctx.device)
        reference = contrastive_module.InfoNCELoss(temperature=ctx.recipe["temperature"], gather_distributed=False)(
            out["features_a"].detach().float(), out["features_b"].detach().float()
        )
        gathered = float(out["loss_cl"].detach())
        grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
        result.update(
            {
                "gather_calls": len(calls),
                "gathered_shapes": calls,
                "loss_cl_gathered": gathered,
                "loss_cl_local": float(reference),
                "gather_matches_local": math.isclose(gathered, float(reference), rel_tol=1e-4, abs_tol=1e-5),
                "grads_finite": grads_finite,
            }
        )
        say(
            f"  [nccl] InfoNCE gather branch: {len(calls)} all_gather calls {calls}, loss_cl {gathered:.6f} vs "
            f"{float(reference):.6f} without the gather ({'match' if result['gather_matches_local'] else 'MISMATCH'})"
            f", gradients {'finite' if grads_finite else 'NOT FINITE'}"
        )
        if not (result["gather_calls"] == 2 and result["gather_matches_local"] and grads_finite):
            raise RuntimeError(f"InfoNCE gather check failed: {json.dumps(result, default=str)}")
        del ddp, model, optimizer, batch, step, out
    finally:
        dist.destroy_process_group()
    return result


def part_inference(ctx: Context) -> dict[str, Any]:
    """Whole-volume segmentation through each runtime, against eager float32 (:mod:`.gpu_inference`)."""
    from brainmvp_components.benchmarks.gpu_inference import run_inference_part

    set_tf32(False)
    return run_inference_part(ctx.device, ctx.args.dry_run_cpu, ctx.args.warmup, ctx.args.steps, say)


def part_compile(ctx: Context) -> dict[str, Any]:
    """Run :func:`compile_child` in a subprocess (its own CUDA context and memory) within ``--compile-budget``."""
    cfg = {k: getattr(ctx.args, k) for k in ("preset", "roi", "batch", "modalities", "warmup", "steps")}
    cfg.update(
        {
            "compile_backend": ctx.args.compile_backend,
            "compile_mode": ctx.args.compile_mode,
            "dry_run_cpu": ctx.args.dry_run_cpu,
            "step_gflop": ctx.step_gflop,
            "matmul": ctx.results.get("matmul"),
        }
    )
    command = harness.child_command(__name__, CHILD_FLAG, cfg)
    if ctx.args.cudnn_benchmark:
        command.append("--cudnn-benchmark")
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=harness.child_env(),
    )
    latest: dict[str, Any] = {}
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            figures = harness.parse_result(line, RESULT_TAG)
            if figures is not None:
                latest.clear()
                latest.update(figures)
            else:
                tail.append(line.rstrip())
                del tail[:-20]
                say(f"  | {line.rstrip()}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    budget = ctx.args.compile_budget
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and its compile workers
        proc.wait()
        reader.join(timeout=5)
        raise RuntimeError(
            f"torch.compile step did not finish within --compile-budget {budget:.0f} s; last figures: "
            f"{json.dumps(latest)}"
        ) from None
    reader.join(timeout=5)
    if proc.returncode != 0 or "step_s_median" not in latest:
        raise RuntimeError(f"compile subprocess exited with {proc.returncode}: " + " | ".join(tail[-5:]))
    say(describe("compile", latest) + f"; compile (first step) {latest['compile_s']:.1f} s")
    return latest


def compile_child(cfg: dict[str, Any]) -> None:
    """The compile part's subprocess: compile the network, report the first step, then time steps."""
    import torch

    args = argparse.Namespace(**{k: cfg[k] for k in ("preset", "roi", "batch", "modalities")})
    device = torch.device("cpu" if cfg["dry_run_cpu"] else "cuda")
    ctx = Context(args, device, load_recipe(), None, {"matmul": cfg["matmul"] or {}}, cfg["step_gflop"])
    autocast = None if cfg["dry_run_cpu"] else "bfloat16"
    model, optimizer = build_model(ctx)
    compiled = torch.compile(model, backend=cfg["compile_backend"], mode=cfg["compile_mode"])
    batch = make_batch(args.batch, args.modalities, args.roi, device)
    step = make_step(ctx, compiled, optimizer, batch, autocast)
    _free_memory(device)
    start = time.perf_counter()
    step()
    harness.sync(device)
    first = time.perf_counter() - start
    report: dict[str, Any] = {"compile_s": first, "backend": cfg["compile_backend"], "mode": cfg["compile_mode"]}
    say(f"first step (compiles) {first:.1f} s")
    print(RESULT_TAG + json.dumps(report), flush=True)
    rate = "bf16" if autocast else "fp32"
    report.update(time_steps(ctx, step, max(cfg["warmup"] - 1, 0), cfg["steps"], "compile", rate))
    from torch._dynamo.utils import counters

    report["graph_breaks"] = sum(counters["graph_break"].values())
    report["autocast"] = autocast
    print(RESULT_TAG + json.dumps(report), flush=True)


# ---------------------------------------------------------------------------------------------- report
def json_path(args: argparse.Namespace) -> Path:
    if args.json:
        return Path(args.json)
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")


def write_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    path = json_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)


def print_table(results: dict[str, Any]) -> None:
    cfg = results["config"]
    say(
        f"\n## BrainMVP pre-training step: {cfg['preset']} preset, {cfg['roi']}^3, {cfg['batch']} cases x "
        f"{cfg['modalities']} targets = {cfg['views']} views, AdamW fused, on {results['device']}\n"
    )
    if results.get("step_tflop"):
        say(
            f"step = 3 x {results['forward_gflop_per_view']:.1f} GFLOP x {cfg['views']} views = "
            f"{results['step_tflop']:.2f} TFLOP (recomputation not counted)\n"
        )
    matmul = results["parts"].get("matmul", {}).get("tflops")
    if matmul:
        say("matmul rate (TFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in matmul.items()) + "\n")
    say(
        "| part | autocast | TF32 matmul/cuDNN | checkpointing | step (s, median) | range (s) | TFLOP/s "
        "| % of matmul | max allocated (GiB) | max reserved (GiB) | loss | notes |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in results["requested_parts"]:
        if name in ("env", "matmul", "inference"):
            continue
        r = results["parts"].get(name)
        if r is None:
            continue
        if "error" in r:
            say(f"| {name} | | | | | | | | | | | FAILED: {r['error'][:200]} |")
            continue

        def fmt(key: str, spec: str = ".2f", r: dict = r) -> str:
            value = r.get(key)
            return "" if value is None else format(value, spec)

        notes = []
        if "grad_scale" in r:
            notes.append(f"grad scale {r['grad_scale']:g}")
        if "compile_s" in r:
            notes.append(f"compile {r['compile_s']:.1f} s, {r.get('graph_breaks', '?')} graph breaks")
        if "gather_calls" in r:
            notes.append(
                f"DDP; InfoNCE gather {r['gather_calls']} calls, "
                f"{'matches' if r['gather_matches_local'] else 'MISMATCH'}"
            )
        onoff = {True: "on", False: "off"}
        tf32 = f"{onoff[r['tf32_matmul']]}/{onoff[r['tf32_cudnn']]}" if "tf32_matmul" in r else "default"
        say(
            f"| {name} | {r.get('autocast') or 'off'} | {tf32} | {'on' if r.get('checkpointing') else 'off'} | "
            f"{fmt('step_s_median', '.3f')} | {fmt('step_s_min', '.3f')}-{fmt('step_s_max', '.3f')} | "
            f"{fmt('tflops', '.1f')} | {fmt('percent_of_matmul', '.0f')} | {fmt('max_allocated_gib')} | "
            f"{fmt('max_reserved_gib')} | {fmt('loss', '.4f')} | {'; '.join(notes)} |"
        )
    inference = results["parts"].get("inference", {})
    if "volume" in inference:
        say(f"\n## Whole-volume inference, volume {inference['volume']}, window {inference['roi_size']}\n")
        say("| runtime | volume (s, median) | max allocated (GiB) | Dice vs eager fp32 (TC / WT / ET) | notes |")
        say("|---|---|---|---|---|")
        for runtime, r in inference.items():
            if not isinstance(r, dict):
                continue
            dice = r.get("dice_vs_eager_fp32")
            shown = " / ".join(f"{dice[k]:.4f}" for k in ("tc", "wt", "et")) if dice else ""
            seconds = f"{r['volume_s_median']:.2f}" if "volume_s_median" in r else ""
            memory = f"{r['max_allocated_gib']:.2f}" if "max_allocated_gib" in r else ""
            say(f"| {runtime} | {seconds} | {memory} | {shown} | {r.get('skipped') or r.get('error') or ''} |")
    failed = [n for n in results["requested_parts"] if "error" in results["parts"].get(n, {})]
    say(f"\nparts failed: {', '.join(failed) if failed else 'none'}; results in {results['json']}")


# ---------------------------------------------------------------------------------------------- main
def child_main(argv: list[str]) -> int:
    """The compile part's subprocess: ``--compile-child JSON [--cudnn-benchmark]`` (see :func:`part_compile`)."""
    parser = argparse.ArgumentParser(description="the compile part's subprocess of gpu_check")
    parser.add_argument(CHILD_FLAG, dest="compile_child", required=True)
    parser.add_argument("--cudnn-benchmark", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(line_buffering=True)
    import torch

    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    compile_child(json.loads(args.compile_child))
    return 0


def run(args: argparse.Namespace) -> int:
    """Every part that ``args`` (``scripts/gpu_check.py``'s arguments) names; the exit status (module docstring)."""
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        import torch
    except ImportError as error:
        print(f"gpu_check: torch cannot be imported ({error}); run scripts/gpu_check.sh", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE.format(version=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2

    recipe = load_recipe()
    if args.dry_run_cpu:
        args.preset, args.roi, args.batch, args.modalities = "tiny", 32, 1, 2
        args.steps, args.warmup, args.matmul_size = 1, 1, 256
        args.compile_backend = "eager"
        args.parts = [
            p for p in args.parts if p in ("env", "matmul", "fp32", "checkpoint", "nccl", "inference", "compile")
        ]
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    for key in ("preset", "roi", "batch", "modalities"):
        if getattr(args, key) is None:
            setattr(args, key, recipe[key])
    parts = ["env"] + [p for p in PARTS if p in args.parts and p != "env"]
    views = 2 * args.batch * args.modalities
    results: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": {
            "preset": args.preset,
            "roi": args.roi,
            "batch": args.batch,
            "modalities": args.modalities,
            "views": views,
            "steps": args.steps,
            "warmup": args.warmup,
            "dry_run_cpu": args.dry_run_cpu,
            "cudnn_benchmark": args.cudnn_benchmark,
        },
        "recipe": recipe,
        "requested_parts": parts,
        "parts": {},
        "json": str(json_path(args)),
    }
    say(f"gpu_check: {results['device']}, torch {torch.__version__}; {json.dumps(results['config'])}")
    ctx = Context(args, device, recipe, load_benchmark(), results["parts"])
    try:
        flops = ctx.bench.count_forward_gflop(args.preset, args.roi)
        ctx.step_gflop = 3 * flops["counter"] * views
        results["forward_gflop_per_view"] = flops["counter"]
        results["step_tflop"] = ctx.step_gflop / 1e3
        say(f"step FLOPs: 3 x {flops['counter']:.2f} GFLOP x {views} views = {ctx.step_gflop / 1e3:.3f} TFLOP")
    except Exception as error:  # noqa: BLE001 - reported, the parts still run without TFLOP/s
        results["flop_count_error"] = f"{type(error).__name__}: {error}"
        say(f"FLOP count failed: {results['flop_count_error']}")

    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "env": lambda: part_env(ctx),
        "matmul": lambda: part_matmul(ctx),
        "nccl": lambda: part_nccl(ctx),
        "compile": lambda: part_compile(ctx),
        "inference": lambda: part_inference(ctx),
        **{name: (lambda name=name: part_step(ctx, name)) for name in STEP_PARTS},
    }
    for name in parts:
        say(f"\n== {name} ==")
        start = time.perf_counter()
        try:
            with part_deadline(0 if name == "compile" else args.part_timeout):
                results["parts"][name] = runners[name]()
        except Exception as error:  # noqa: BLE001 - one failing part must not stop the others
            message = f"{type(error).__name__}: {error}".strip()
            results["parts"][name] = {"error": message}
            say(f"[{name}] FAILED: {message}")
        finally:
            results["parts"].setdefault(name, {})["part_s"] = time.perf_counter() - start
            set_tf32(None)
            with contextlib.suppress(Exception):
                _free_memory(device)
            write_results(args, results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_results(args, results)
    print_table(results)
    return 1 if any("error" in r for r in results["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
