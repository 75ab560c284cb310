"""Time one sliding window of the BraTS segmentation network: eager PyTorch, ONNX Runtime and OpenVINO, side by side.

The network is the segmentation bundle's ``network_def`` (``inference.json``, with ``quick.json`` for the tiny
UniFormer), with random weights from a fixed seed. It is exported as users export it, with ``monai.bundle
onnx_export`` and the bundle's options (a fixed ``(1, 4, roi, roi, roi)`` input), and the same seeded window goes
through:

- ``eager``: the PyTorch network in float32 under ``torch.inference_mode()``;
- ``onnxruntime``: the ONNX file through :class:`~brainmvp_components.inference.onnx_network.OnnxNetwork` (the
  bundle's ``inference_onnx.json``), CPU execution provider, float32;
- ``openvino`` (when the ``openvino`` package is installed): the same ONNX file read and compiled for the CPU with
  ``INFERENCE_PRECISION_HINT`` f32, and ``openvino default``, with the CPU plugin's own precision (bfloat16 on a CPU
  with bfloat16 units).

Each backend gets ``threads`` threads; the backends are timed in interleaved rounds (:func:`harness.interleave`) after
one untimed warm-up forward each. Reported per backend: the fastest and the median seconds per window, the ratio of
the fastest to eager's, the largest absolute difference of its logits from eager's and the fraction of voxel
decisions (sigmoid > 0.5) that agree with eager's. Run by ``scripts/benchmark_export.py``; figures and commands are
recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from brainmvp_components.benchmarks import harness

CONFIGS = harness.PACKAGE_ROOT / "bundles" / "brainmvp_brats_seg" / "configs"
PRESET_CONFIGS = {"small": ["inference.json"], "tiny": ["inference.json", "quick.json"]}
"""The bundle's config files that define each network size."""
COLUMNS = [
    "backend",
    "per window (s), best",
    "median",
    "best / eager",
    "max abs logit diff",
    "labels agree with eager",
]


def bundle_network(preset: str, seed: int = 0) -> tuple[torch.nn.Module, list[str], list[int]]:
    """The bundle's ``network_def`` of ``preset`` with seeded random weights, its config files and its window."""
    from monai.bundle import ConfigParser

    files = [str(CONFIGS / name) for name in PRESET_CONFIGS[preset]]
    parser = ConfigParser()
    parser.read_config(files)
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def").eval()
    return network, files, [int(s) for s in parser.get_parsed_content("roi_size")]


def export_onnx(
    network: torch.nn.Module, config_files: Sequence[str], input_shape: Sequence[int], out_dir: Path
) -> Path:
    """``network``'s weights saved as ``model.pt`` and exported by ``monai.bundle onnx_export`` to ``model.onnx``."""
    from monai.bundle import onnx_export

    from brainmvp_components.inference.onnx_network import EXPORT_OPTIONS

    ckpt, path = out_dir / "model.pt", out_dir / "model.onnx"
    torch.save(network.state_dict(), ckpt)
    onnx_export(
        net_id="network_def",
        filepath=str(path),
        ckpt_file=str(ckpt),
        config_file=list(config_files),
        input_shape=list(input_shape),
        **EXPORT_OPTIONS,
    )
    return path


def backends(network: torch.nn.Module, path: Path, threads: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each backend as a function of one window ``(1, 4, *roi)`` -> logits ``(1, 3, *roi)`` (float32, CPU)."""
    from brainmvp_components.inference.onnx_network import OnnxNetwork

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return network(x)

    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "eager": eager,
        "onnxruntime": OnnxNetwork(path, intra_op_num_threads=threads),
    }
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        core = openvino.Core()
        model = core.read_model(str(path))
        for name, precision in (("openvino", "f32"), ("openvino default", None)):
            config = {
                "INFERENCE_NUM_THREADS": threads,
                **({"INFERENCE_PRECISION_HINT": precision} if precision else {}),
            }
            compiled = core.compile_model(model, "CPU", config)
            if precision is None:
                name = f"openvino default ({compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()})"
            runners[name] = lambda x, c=compiled: torch.from_numpy(np.asarray(c(x.numpy())[0]))
    return runners


def run(preset: str = "tiny", roi: int | None = None, threads: int = 1, repeats: int = 3, seed: int = 0) -> dict:
    """Export, then time one window on every backend; returns the settings, the export time and one row per backend."""
    torch.set_num_threads(threads)
    network, files, window = bundle_network(preset, seed)
    window = [roi] * 3 if roi else window
    shape = [1, network.in_channels, *window]
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(network, files, shape, Path(tmp))
        export_s = time.perf_counter() - start
        runners = backends(network, path, threads)
        outputs = {name: fn(x) for name, fn in runners.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _, name in harness.interleave(list(runners), repeats):
            start = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - start)
    reference = outputs["eager"]
    rows = []
    for name, out in outputs.items():
        rows.append(
            {
                "backend": name,
                "best_s": min(times[name]),
                "median_s": statistics.median(times[name]),
                "ratio": min(times[name]) / min(times["eager"]),
                "max_abs_diff": float((out.float() - reference).abs().max()),
                "labels_agree": float(((out > 0) == (reference > 0)).float().mean()),
            }
        )
    settings = {"preset": preset, "input_shape": shape, "threads": threads, "repeats": repeats, "seed": seed}
    return {"settings": settings, "export_s": export_s, "rows": rows}


def table(result: dict) -> str:
    """``result`` of :func:`run` as a markdown table."""
    lines = [harness.table_header(COLUMNS)]
    for r in result["rows"]:
        cells = [r["backend"], f"{r['best_s']:.3f}", f"{r['median_s']:.3f}", f"{r['ratio']:.2f}"]
        cells += [f"{r['max_abs_diff']:.1e}", f"{100 * r['labels_agree']:.4f}%"]
        lines.append(harness.table_row(cells))
    return "\n".join(lines)
