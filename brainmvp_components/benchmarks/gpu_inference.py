"""The ``inference`` part of the GPU check: whole-volume segmentation through each GPU runtime, against eager.

The segmentation bundle's network (``network_def`` of ``inference.json``: UniUNet on UniFormer-S, random seeded
weights) segments one seeded ``4 x 240 x 240 x 155`` volume (smoothed noise, a BraTS case's size) with the
bundle's inferer settings (window, overlap, windows per forward, gaussian blending), in turn:

- ``eager_fp32``: PyTorch float32 (TF32 off): the reference labels;
- ``eager_fp16`` / ``eager_bf16``: the bundle's ``amp`` path, ``torch.autocast`` to float16 or bfloat16;
- ``onnxruntime``: the network exported to ONNX (``torch.onnx.export``, a fixed window batch) and run by ONNX
  Runtime's CUDA execution provider (``onnxruntime-gpu``) where it is installed;
- ``tensorrt``: ``torch_tensorrt.compile`` of the network with float16 kernels where ``torch_tensorrt`` is installed.

Each runtime reports seconds per volume (median of ``steps`` after ``warmup`` untimed runs, device synchronised),
its peak allocated GPU memory, and the Dice per region (TC, WT, ET) of its labels (logit >= 0) against
``eager_fp32``'s. A runtime that is not installed is reported as such, not as a failure. With ``dry_run`` (a CPU)
the same code runs on a tiny network and volume, ONNX Runtime on its CPU provider.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainmvp_components.benchmarks import harness
from brainmvp_components.benchmarks.harness import GIB

__all__ = ["RUNTIMES", "region_dice", "run_inference_part"]

REPO_ROOT = harness.PACKAGE_ROOT
INFERENCE_CONFIG = REPO_ROOT / "bundles" / "brainmvp_brats_seg" / "configs" / "inference.json"
QUICK_CONFIG = REPO_ROOT / "bundles" / "brainmvp_brats_seg" / "configs" / "quick.json"
RUNTIMES: tuple[str, ...] = ("eager_fp32", "eager_fp16", "eager_bf16", "onnxruntime", "tensorrt")
VOLUME = (4, 240, 240, 155)


def region_dice(labels: Any, reference: Any) -> dict[str, float]:
    """Dice per region between two ``(1, 3, H, W, D)`` boolean label maps (1.0 where both are empty)."""
    dice = {}
    for index, region in enumerate(("tc", "wt", "et")):
        a, b = labels[:, index], reference[:, index]
        total = int(a.sum()) + int(b.sum())
        dice[region] = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
    return dice


def _bundle_network(dry_run: bool) -> tuple[Any, dict[str, Any]]:
    """The bundle's ``network_def`` (random weights, seed 0) and inferer settings; ``quick.json`` for a dry run."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(INFERENCE_CONFIG), *([str(QUICK_CONFIG)] if dry_run else [])])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    settings = {key: parser.get_parsed_content(key) for key in ("roi_size", "sw_batch_size", "sw_overlap")}
    return network, settings


def _volume(shape: tuple[int, ...], device: Any) -> Any:
    """A seeded ``(1, *shape)`` batch of one volume of smoothed noise scaled to [0, 1] (structure at several scales)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    noise = torch.rand((1, *shape), generator=generator)
    smooth = F.avg_pool3d(noise, kernel_size=9, stride=1, padding=4)
    smooth = (smooth - smooth.amin()) / (smooth.amax() - smooth.amin())
    return (0.7 * smooth + 0.3 * noise).to(device)


def _onnx_forward(network: Any, window: tuple[int, ...], device: Any, folder: Path) -> Callable | str:
    """ONNX Runtime on CUDA (CPU on a CPU device) running the exported network, or why it cannot."""
    import numpy as np
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return "unavailable: onnxruntime is not installed (onnxruntime-gpu for the CUDA provider)"
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return f"unavailable: onnxruntime {ort.__version__} has no {provider} (install onnxruntime-gpu)"
    path = folder / "network.onnx"
    example = torch.zeros(window, device=device)
    try:
        torch.onnx.export(network, (example,), str(path), input_names=["image"], output_names=["logits"], dynamo=False)
    except Exception as error:  # noqa: BLE001 - the exporter's own error is the message
        return f"unavailable: ONNX export failed ({type(error).__name__}: {error})"
    session = ort.InferenceSession(str(path), providers=[provider])

    def forward(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != window:  # the last, partial batch of windows: pad it to the exported batch
            padded = torch.zeros(window, device=x.device, dtype=x.dtype)
            padded[: x.shape[0]] = x
            return forward(padded)[: x.shape[0]]
        (out,) = session.run(None, {"image": np.ascontiguousarray(x.float().cpu().numpy())})
        return torch.from_numpy(out).to(x.device)

    return forward


def _tensorrt_forward(network: Any, window: tuple[int, ...], device: Any) -> Callable | str:
    """``torch_tensorrt`` float16 engine of the network, or why it cannot run."""
    import torch

    if device.type != "cuda":
        return "unavailable: TensorRT needs a CUDA device"
    try:
        import torch_tensorrt
    except ImportError:
        return "unavailable: torch_tensorrt is not installed"
    engine = torch_tensorrt.compile(
        network, inputs=[torch_tensorrt.Input(window)], enabled_precisions={torch.float16, torch.float32}
    )

    def forward(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != window:
            padded = torch.zeros(window, device=x.device, dtype=x.dtype)
            padded[: x.shape[0]] = x
            return forward(padded)[: x.shape[0]]
        return engine(x.float()).float()

    return forward


def run_inference_part(device: Any, dry_run: bool, warmup: int, steps: int, say: Callable[[str], None]) -> dict:
    """Every runtime of :data:`RUNTIMES` on the bundle's network and one volume (see the module docstring)."""
    import torch
    from monai.inferers import SlidingWindowInferer

    network, settings = _bundle_network(dry_run)
    network = network.to(device)
    shape = (4, 64, 64, 48) if dry_run else VOLUME
    volume = _volume(shape, device)
    window = (int(settings["sw_batch_size"]), 4, *(int(s) for s in settings["roi_size"]))
    inferer = SlidingWindowInferer(
        roi_size=settings["roi_size"], sw_batch_size=settings["sw_batch_size"], overlap=settings["sw_overlap"],
        mode="gaussian",
    )  # fmt: skip
    results: dict[str, Any] = {"volume": list(shape), **{k: settings[k] for k in ("roi_size", "sw_batch_size")}}
    reference = None
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        for name in RUNTIMES:
            try:
                if name.startswith("eager"):
                    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name.split("_")[1]]
                    if dtype is torch.float16 and device.type != "cuda":
                        results[name] = {"skipped": "float16 autocast is a CUDA path"}
                        continue

                    def forward(x, dtype=dtype):
                        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                            return network(x).float()

                elif name == "onnxruntime":
                    forward = _onnx_forward(network, window, device, Path(folder))
                else:
                    forward = _tensorrt_forward(network, window, device)
                if isinstance(forward, str):
                    results[name] = {"skipped": forward}
                    say(f"  [{name}] {forward}")
                    continue
                results[name] = _time_runtime(inferer, forward, volume, device, warmup, steps)
                labels = results[name].pop("labels")
                if reference is None:
                    reference = labels
                results[name]["dice_vs_eager_fp32"] = region_dice(labels, reference)
                say(f"  [{name}] {results[name]['volume_s_median']:.2f} s per volume, Dice against eager fp32 "
                    + ", ".join(f"{k} {v:.4f}" for k, v in results[name]["dice_vs_eager_fp32"].items()))  # fmt: skip
            except Exception as error:  # noqa: BLE001 - one runtime failing must not stop the others
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                say(f"  [{name}] FAILED: {results[name]['error']}")
    failed = [name for name in RUNTIMES if "error" in results[name]]
    if failed:  # the part counts as failed; the runtimes that ran keep their figures
        results["error"] = f"runtime(s) failed: {', '.join(failed)}"
    return results


def _time_runtime(inferer: Any, forward: Callable, volume: Any, device: Any, warmup: int, steps: int) -> dict:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, logits = [], None
    for i in range(warmup + max(1, steps)):
        harness.sync(device)
        start = time.perf_counter()
        logits = inferer(volume, forward)
        harness.sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    result = {
        "volume_s_median": statistics.median(times),
        "volume_s_min": min(times),
        "runs": len(times),
        "labels": (logits >= 0).cpu(),
    }
    if device.type == "cuda":
        result["max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    return result
