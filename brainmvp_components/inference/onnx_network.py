"""An exported ONNX model as a network: ONNX Runtime behind the call signature MONAI's inferers use.

``python -m monai.bundle onnx_export`` writes the bundle's network as an ONNX file; :class:`OnnxNetwork` runs that file
with an ``onnxruntime.InferenceSession`` and takes and returns torch tensors, so ``SlidingWindowInferer``, the
evaluator and the post-processing of ``inference.json`` run unchanged (the segmentation bundle's
``inference_onnx.json``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainmvp_components.inference.batch import InferenceError

__all__ = ["EXPORT_OPTIONS", "OnnxModelError", "OnnxNetwork", "onnx_export_command"]

_ONNX_FLOAT = "tensor(float)"

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


class OnnxNetwork(nn.Module):
    """Run an ONNX model of one input and one output with ONNX Runtime, on torch tensors.

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers, in order of preference.
        intra_op_num_threads: threads of one operator; 0 lets ONNX Runtime choose (one per physical core).
        window: the input a forward gets without its batch axis, ``(C, *roi_size)``; a model exported for another
            one is refused here rather than at the first window.
        export_command: the command that writes ``path`` for ``window``, named when the file is missing or was
            exported for other windows.

    Shapes: ``(B, C, *S) -> (B, C_out, *S)``, as the exported network. A model exported with a fixed batch size is run
    on the input in chunks of that size; one exported with fixed spatial sides takes only inputs of those sides.
    The output is float32 on the input's device.

    Raises:
        OnnxModelError: ``path`` is not a file, ONNX Runtime cannot load it, it does not take one float input of rank 5
            and give one output, or it was exported for windows other than ``window``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_num_threads: int = 0,
        window: Sequence[int] | None = None,
        export_command: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        how = f"; export it with: {export_command}" if export_command else ""
        if not self.path.is_file():
            raise OnnxModelError(self.path, f"not found{how}")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(intra_op_num_threads)
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        except Exception as err:
            problem = " ".join(str(err).split())
            raise OnnxModelError(
                self.path, f"cannot be loaded by ONNX Runtime: {type(err).__name__}: {problem}"
            ) from err
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 5 or inputs[0].type != _ONNX_FLOAT:
            found = [(i.name, i.type, i.shape) for i in inputs]
            raise OnnxModelError(self.path, f"must take one float input (B, C, H, W, D), it takes {found}")
        if len(outputs) != 1:
            raise OnnxModelError(
                self.path, f"gives {len(outputs)} outputs, one is needed (export the network in eval mode)"
            )
        self.input_name = inputs[0].name
        self.input_shape: list[int | None] = [d if isinstance(d, int) else None for d in inputs[0].shape]
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
        return self.session.run(None, {self.input_name: x})[0]

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
        return f"path={str(self.path)!r}, providers={self.session.get_providers()}"
