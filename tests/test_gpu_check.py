"""scripts/gpu_check.py without a GPU: its help, the clear exit without CUDA, and the CPU dry run of its code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**env, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_help(subprocess_env, tmp_path):
    proc = _run(["--help"], subprocess_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for option in ("--steps", "--roi", "--batch", "--modalities", "--parts", "--dry-run-cpu"):
        assert option in proc.stdout


def test_no_cuda_exits_2_with_one_line(subprocess_env, tmp_path):
    proc = _run([], subprocess_env, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("gpu_check: no CUDA device is visible") and "--dry-run-cpu" in lines[0]
    assert not (tmp_path / "gpu_check.json").exists()


def test_dry_run_cpu_runs_every_cpu_part(subprocess_env, tmp_path):
    out = tmp_path / "results.json"
    proc = _run(["--dry-run-cpu", "--json", str(out)], subprocess_env, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    parts = results["parts"]
    assert results["config"] == {
        "preset": "tiny",
        "roi": 32,
        "batch": 1,
        "modalities": 2,
        "views": 4,
        "steps": 1,
        "warmup": 1,
        "dry_run_cpu": True,
        "cudnn_benchmark": False,
    }
    assert results["recipe"]["batch"] == 3 and results["recipe"]["modalities"] == 4 and results["recipe"]["roi"] == 96
    assert list(parts) == ["env", "matmul", "fp32", "checkpoint", "nccl", "inference", "compile"]
    assert not [name for name, r in parts.items() if "error" in r]
    for name in ("fp32", "checkpoint", "nccl", "compile"):
        assert parts[name]["finite"] and parts[name]["step_s_median"] > 0 and parts[name]["tflops"] > 0
    assert parts["fp32"]["tf32_matmul"] is False and parts["checkpoint"]["checkpointing"] is True
    assert parts["nccl"]["backend"] == "gloo" and parts["nccl"]["gather_calls"] == 2
    # inference: eager float32 is the reference; bfloat16 and the exported model (ONNX Runtime, here on its CPU
    # provider) segment the same volume with labels close to it; float16 and TensorRT are GPU paths
    inference = parts["inference"]
    assert inference["eager_fp32"]["dice_vs_eager_fp32"] == {"tc": 1.0, "wt": 1.0, "et": 1.0}
    for runtime in ("eager_bf16", "onnxruntime"):
        assert inference[runtime]["volume_s_median"] > 0
        assert min(inference[runtime]["dice_vs_eager_fp32"].values()) > 0.9, inference[runtime]
    assert "CUDA" in inference["eager_fp16"]["skipped"] and "CUDA" in inference["tensorrt"]["skipped"]
    assert "Whole-volume inference" in proc.stdout and "| onnxruntime |" in proc.stdout
    assert parts["nccl"]["gather_matches_local"] and parts["compile"]["backend"] == "eager"
    assert "| fp32 | off | off/off | off |" in proc.stdout and "parts failed: none" in proc.stdout
