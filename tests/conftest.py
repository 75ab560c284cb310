"""Shared fixtures: tiny embedded cohorts generated once per test session (2 mm, few subjects)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
OFFICIAL_REFERENCE_DIR = REPO_ROOT / "tests" / "data" / "official_brainmvp"
"""The authors' checkpoint interface: state-dict key/shape lists and reference outputs (see its README)."""


def _make(tmp_path_factory, kind: str, subjects: int, **kwargs) -> Path:
    from brainmvp_components.data.cohort import make_cohort

    out = tmp_path_factory.mktemp(f"cohort_{kind}")
    make_cohort(out, kind, subjects, seed=0, spacing=2.0, **kwargs)
    return out


@pytest.fixture(scope="session")
def brats_cohort(tmp_path_factory) -> Path:
    """Six BraTS-2021-named cases (t1, t1ce, t2, flair, seg) at 2 mm."""
    return _make(tmp_path_factory, "brats", 6)


@pytest.fixture(scope="session")
def pretrain_cohort(tmp_path_factory) -> Path:
    """Six unlabeled cases with missing modalities (some with pd) at 2 mm."""
    return _make(tmp_path_factory, "pretrain", 6, missing_rate=0.4)


@pytest.fixture(scope="session")
def adni_cohort(tmp_path_factory) -> Path:
    """Eight T1-only cases, CN and AD, with labels.csv, at 2 mm."""
    return _make(tmp_path_factory, "adni", 8)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for `python -m monai.bundle` subprocesses: the repository importable, no GPU."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def python_executable() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def run_bundle(subprocess_env, python_executable):
    """``run_bundle(name, configs, bundle_root, **overrides)``: ``python -m monai.bundle run`` of the repository's
    bundle ``name`` with its ``configs`` (file names in its ``configs/``), outputs under ``bundle_root``; asserts
    success and returns the output. Values other than strings are passed as JSON."""
    import json
    import subprocess

    def run(name: str, configs: list[str], bundle_root: Path, timeout: int = 900, **overrides) -> str:
        folder = BUNDLES_DIR / name / "configs"
        command = [python_executable, "-m", "monai.bundle", "run", "--config_file"]
        command += [json.dumps([str(folder / c) for c in configs]), "--meta_file", str(folder / "metadata.json")]
        command += ["--bundle_root", str(bundle_root)]
        for key, value in overrides.items():
            command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        result = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=timeout)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{name} {configs} failed:\n{output[-6000:]}"
        return output

    return run
