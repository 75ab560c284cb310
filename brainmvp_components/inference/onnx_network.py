"""An exported ONNX model as a network: ONNX Runtime or OpenVINO behind the call signature MONAI's inferers use.

``python -m monai.bundle onnx_export`` writes the bundle's network as an ONNX file; :class:`OnnxNetwork` runs that file
with an ``onnxruntime.InferenceSession`` or an OpenVINO compiled model and takes and returns torch tensors, so
``SlidingWindowInferer``, the evaluator and the post-processing of ``inference.json`` run unchanged (the segmentation
bundle's ``inference_onnx.json`` and ``inference_openvino.json``).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainmvp_components.inference.batch import InferenceError

__all__ = ["EXPORT_OPTIONS", "RUNTIMES", "OnnxModelError", "OnnxNetwork", "onnx_export_command"]

_ONNX_FLOAT = "tensor(float)"
RUNTIMES = ("onnxruntime", "openvino")
"""Runtimes :class:`OnnxNetwork` runs a model with."""
_OPENVINO_PRECISIONS = ("f32", "bf16", "f16")

EXPORT_OPTIONS = {"use_trace": True, "converter_kwargs": {"external_data": False}}
"""``onnx_export`` options the bundle exports with. ``converter_kwargs`` reach ``torch.onnx.export`` only with
``use_trace`` (with PyTorch >= 2.9 both paths use its ``torch.export``-based exporter); ``external_data=False`` keeps
that exporter from writing the weights beside MONAI's temporary file, where nothing removes them (the saved ``.onnx``
holds the weights either way)."""


class OnnxModelError(InferenceError):
    """The ONNX model is missing, cannot be loaded or does not fit the run; the message names the file.

    An :class:`~brainmvp_components.inference.batch.InferenceError`: ``python -m monai.bundle run`` ends with its
    one-line message and exit status 1.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"ONNX model {path} {problem}")
        self.path = Path(path)


def onnx_export_command(
    filepath: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    config_file: str | os.PathLike | Sequence[str | os.PathLike],
    input_shape: Sequence[int],
    net_id: str = "network_def",
) -> str:
    """The ``python -m monai.bundle onnx_export`` command line that writes ``filepath`` from ``ckpt_file``.

    With :data:`EXPORT_OPTIONS`.

    Args:
        filepath: the ONNX file to write.
        ckpt_file: the checkpoint (a state dict) of the network.
        config_file: the config file(s) that define ``net_id``.
        input_shape: the shape of the example input, ``(B, C, *roi_size)``.
        net_id: the id of the network definition in the configs.
    """
    files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(f) for f in config_file]
    configs = shlex.quote(files[0]) if len(files) == 1 else f'"{files}"'
    words = ["python -m monai.bundle onnx_export --net_id", net_id, "--filepath", shlex.quote(str(filepath))]
    words += ["--ckpt_file", shlex.quote(str(ckpt_file)), "--config_file", configs]
    words += ["--input_shape", f'"{[int(s) for s in input_shape]}"', "--use_trace", str(EXPORT_OPTIONS["use_trace"])]
    words += ["--converter_kwargs", f'"{EXPORT_OPTIONS["converter_kwargs"]}"']
    return " ".join(words)


class _OrtModel:
    """An ONNX Runtime session: the input's name, shape and type, and a run of one array."""

    def __init__(self, path: Path, providers: Sequence[str], threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=list(providers))
        inputs = self.session.get_inputs()
        self.inputs = [
            (i.name, i.type == _ONNX_FLOAT, [d if isinstance(d, int) else None for d in i.shape]) for i in inputs
        ]
        self.described_inputs = [(i.name, i.type, i.shape) for i in inputs]
        self.num_outputs = len(self.session.get_outputs())
        self.description = f"providers={self.session.get_providers()}"

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.inputs[0][0]: x})[0]


class _OpenVinoModel:
    """An OpenVINO model compiled for the CPU: the same interface as :class:`_OrtModel`."""

    def __init__(self, path: Path, threads: int, precision: str | None) -> None:
        import openvino

        core = openvino.Core()
        model = core.read_model(str(path))
        config: dict[str, object] = {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(model, "CPU", config)
        self.inputs = []
        self.described_inputs = []
        for port in self.compiled.inputs:
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            is_float = port.get_element_type() == openvino.Type.f32
            self.inputs.append((port.get_any_name(), is_float, shape))
            self.described_inputs.append((port.get_any_name(), str(port.get_element_type()), shape))
        self.num_outputs = len(self.compiled.outputs)
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.description = f"openvino CPU, precision={used}"

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(x)[0], dtype=np.float32)


class OnnxNetwork(nn.Module):
    """Run an ONNX model of one input and one output with ONNX Runtime or OpenVINO, on torch tensors.

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers, in order of preference (``runtime="onnxruntime"`` only).
        intra_op_num_threads: threads of one operator; 0 lets the runtime choose (one per physical core).
        window: the input a forward gets without its batch axis, ``(C, *roi_size)``; a model exported for another
            one is refused here rather than at the first window.
        export_command: the command that writes ``path`` for ``window``, named when the file is missing or was
            exported for other windows.
        runtime: one of :data:`RUNTIMES`.
        precision: OpenVINO's ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``, ``"f16"``); ``None`` keeps the
            CPU plugin's default, which is bfloat16 on CPUs with AMX or AVX-512 BF16 and float32 elsewhere.

    Shapes: ``(B, C, *S) -> (B, C_out, *S)``, as the exported network. A model exported with a fixed batch size is run
    on the input in chunks of that size; one exported with fixed spatial sides takes only inputs of those sides.
    The output is float32 on the input's device.

    Raises:
        OnnxModelError: ``path`` is not a file, the runtime is not installed or cannot load it, it does not take one
            float input of rank 5 and give one output, or it was exported for windows other than ``window``.
        ValueError: ``runtime`` or ``precision`` is not one of those listed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_num_threads: int = 0,
        window: Sequence[int] | None = None,
        export_command: str | None = None,
        runtime: str = "onnxruntime",
        precision: str | None = None,
    ) -> None:
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
        if precision is not None and (runtime != "openvino" or precision not in _OPENVINO_PRECISIONS):
            raise ValueError(
                f"precision is an OpenVINO setting, one of {list(_OPENVINO_PRECISIONS)} or None; got {precision!r} "
                f"for runtime {runtime!r}"
            )
        self.path = Path(path)
        self.runtime = runtime
        how = f"; export it with: {export_command}" if export_command else ""
        if not self.path.is_file():
            raise OnnxModelError(self.path, f"not found{how}")
        package = "onnxruntime" if runtime == "onnxruntime" else "openvino"
        if importlib.util.find_spec(package) is None:
            raise OnnxModelError(self.path, f"needs {package}, which is not installed (pip install {package})")
        try:
            if runtime == "onnxruntime":
                self.model: _OrtModel | _OpenVinoModel = _OrtModel(self.path, providers, intra_op_num_threads)
            else:
                self.model = _OpenVinoModel(self.path, intra_op_num_threads, precision)
        except Exception as err:
            problem = " ".join(str(err).split())
            raise OnnxModelError(self.path, f"cannot be loaded by {package}: {type(err).__name__}: {problem}") from err
        inputs = self.model.inputs
        if len(inputs) != 1 or len(inputs[0][2]) != 5 or not inputs[0][1]:
            raise OnnxModelError(
                self.path, f"must take one float input (B, C, H, W, D), it takes {self.model.described_inputs}"
            )
        if self.model.num_outputs != 1:
            raise OnnxModelError(
                self.path, f"gives {self.model.num_outputs} outputs, one is needed (export the network in eval mode)"
            )
        self.input_name = inputs[0][0]
        self.input_shape: list[int | None] = inputs[0][2]
        if window is not None and not self._fits([1, *window]):
            problem = f"takes {self._expected()}, the run gives windows of {list(window)}"
            if len(window) == 4 and self._fits([1, window[0], *self.input_shape[2:]]):
                problem += f": set roi_size to {self._expected()[2:]}"
                problem += f", or export it for these windows with: {export_command}" if export_command else ""
            raise OnnxModelError(self.path, problem)

    def _expected(self) -> list[int | str]:
        return ["B" if d is None or i == 0 else d for i, d in enumerate(self.input_shape)]

    def _fits(self, shape: Sequence[int]) -> bool:
        return len(shape) == 5 and all(d is None or i == 0 or shape[i] == d for i, d in enumerate(self.input_shape))

    def _check(self, x: torch.Tensor) -> None:
        if not self._fits(x.shape):
            hint, sides = "", self._expected()[2:]
            if x.ndim == 5 and self._fits([1, x.shape[1], *self.input_shape[2:]]):
                hint = f"; export it again with --input_shape {[1, *x.shape[1:]]} or set roi_size to {sides}"
            raise ValueError(f"ONNX model {self.path} takes {self._expected()}, got {list(x.shape)}{hint}")

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        array = np.ascontiguousarray(x.detach().as_subclass(torch.Tensor).to(device="cpu", dtype=torch.float32).numpy())
        batch = self.input_shape[0]
        if batch is None or batch == array.shape[0]:
            out = self._run(array)
        else:
            chunks = []
            for start in range(0, array.shape[0], batch):
                chunk = array[start : start + batch]
                short = batch - chunk.shape[0]
                if short:
                    chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
                chunks.append(self._run(chunk)[: batch - short])
            out = np.concatenate(chunks)
        if out.shape[0] != x.shape[0] or out.shape[2:] != tuple(x.shape[2:]):
            raise ValueError(f"ONNX model {self.path} gave {list(out.shape)} for an input of {list(x.shape)}")
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, runtime={self.runtime}, {self.model.description}"
