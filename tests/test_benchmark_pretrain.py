"""scripts/benchmark_pretrain.py without running a step: the side-by-side table and ratios, and ``--authors-repo``.

The authors' code is never vendored here, so their step itself is not run in the tests: only the message for a
path that is not a checkout, the crop their step needs, and the one-line message when their code imports a package
that is not installed. (A real step, even at toy sizes, costs a subprocess with MONAI imported per variant.)
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from brainmvp_components.benchmarks import pretrain_step

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_pretrain.py"


def _run(args: list[str], env: dict[str, str], cwd: Path, command: list[str] | None = None):
    env = {**env, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *(command or [str(SCRIPT)]), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_pretrain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(variant: str, step_s: float, peak_gib: float, batch: int = 1) -> dict:
    return {
        "variant": variant,
        "precision": "fp32",
        "use_checkpoint": False,
        "batch": batch,
        "device": "cpu x 2",
        "memory_kind": "process max RSS",
        "step_s": step_s,
        "phases_s": [step_s / 4, step_s / 2, step_s / 4],
        "peak_gib": peak_gib,
        "delta_gib": peak_gib / 2,
        "loss": 1.0,
        "parameters_m": 22.0,
    }


def test_step_table_and_ratios_side_by_side(tmp_path, capsys):
    """The table and the ratios for baseline, ours and the authors' step at the matched workload (4 views each);
    the numbers are made up, the subprocesses are not run (a real step needs UniFormer-S at 96^3)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "Uniformer.py").write_text("")
    args = _load_script().parse_args(
        ["--part", "step", "--preset", "small", "--roi", "96", "--batch", "1", "--modalities", "2",
         "--precision", "fp32", "--authors-repo", str(tmp_path)]
    )  # fmt: skip
    assert args.authors_batch == 2
    results = [_result("baseline", 80.0, 11.0), _result("ours", 40.0, 5.5), _result("authors", 100.0, 11.0, batch=2)]
    flops = {"counter": 137.6, "hand": 137.6}
    pretrain_step.print_steps(args, results, {"fp32": 150.0, "bf16": 600.0}, flops, flops)
    out = capsys.readouterr().out
    assert "1 cases x 2 modalities = 4 views" in out
    assert "2 cases x 1 random modality x 2 views = 4 views, fp32\n" in out
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ") and "fp32" in line] == [
        "| baseline",
        "| ours",
        "| authors",
    ]
    assert "baseline / ours, fp32: step time 2.00x, peak memory 2.00x" in out
    assert "ours (fp32) / authors (fp32), matched workload: step time 0.40x, peak memory 0.50x" in out
    assert f"{3 * 137.6 * 4 / 100.0:.1f} |" in out  # the authors' GFLOP/s: their 4 views in 100 s

    args.authors_batch = 3  # 6 views against our 4: said so, and the ratio line says it too
    pretrain_step.print_steps(args, results[1:], {"fp32": 150.0, "bf16": 600.0}, flops, flops)
    out = capsys.readouterr().out
    assert "NOT the matched workload" in out and "ours (fp32) / authors (fp32), NOT the matched workload" in out


def test_authors_repo_needs_the_authors_crop(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "Uniformer.py").write_text("")
    with pytest.raises(SystemExit) as stop:
        _load_script().parse_args(["--roi", "32", "--authors-repo", str(tmp_path)])
    assert stop.value.code == 2
    assert "--authors-repo needs --roi 96" in capsys.readouterr().err


def test_authors_repo_that_is_not_a_checkout(subprocess_env, tmp_path):
    proc = _run(["--part", "step", "--authors-repo", "/nonexistent"], subprocess_env, tmp_path)
    assert proc.returncode == 2
    assert "--authors-repo /nonexistent: not a checkout of the authors' BrainMVP repository" in proc.stderr


def test_authors_step_names_a_missing_package(subprocess_env, tmp_path):
    """A stand-in checkout whose model module imports an absent package: one line naming it, with their pin."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "Uniformer.py").write_text("import brainmvp_absent_package\n")
    (tmp_path / "requirements.txt").write_text("brainmvp_absent_package==1.2.3\n")
    cfg = {"variant": "authors", "authors_repo": str(tmp_path), "batch": 2, "steps": 0, "threads": 1}
    child = ["-m", "brainmvp_components.benchmarks.pretrain_step"]  # the module each variant's subprocess runs
    proc = _run(["--step-child", json.dumps(cfg)], subprocess_env, tmp_path, child)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("BENCHMARK_RESULT "))
    assert result == {
        "error": "the authors' code needs the package 'brainmvp_absent_package', which is not installed: "
        "pip install brainmvp_absent_package==1.2.3 (pinned in their requirements.txt)"
    }
