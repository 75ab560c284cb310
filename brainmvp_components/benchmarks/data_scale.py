"""Peak memory of a pre-training epoch against the number of subjects, for each data-set caching mode.

Example::

    python scripts/benchmark_data_scale.py --subjects 16 64 256 --cache disk memory

A base cohort of ``--base-subjects`` embedded subjects is generated once; larger cohorts copy its case
folders under new names (distinct files and datalist entries, so every copy is read, pre-processed and
cached on its own). For every cohort size and caching mode the brainmvp_pretrain bundle (``train.json`` +
``quick.json``) runs one epoch in a fresh process with an empty cache; the script samples the resident
memory of that process and its children every 0.1 s and reports the peak, the seconds from launch until the
first training iteration is logged, and the total. ``disk`` must stay flat as the cohort grows; ``memory``
(``CacheDataset`` with ``cache_rate`` 1.0) is the baseline that grows with it and waits for the whole cache
before the first iteration.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from brainmvp_components.benchmarks import harness

REPO_ROOT = harness.PACKAGE_ROOT
CONFIG_DIR = REPO_ROOT / "bundles" / "brainmvp_pretrain" / "configs"


def make_cohorts(root: Path, base_subjects: int, sizes: list[int], spacing: float) -> dict[int, Path]:
    """One folder per size: the base cohort's case folders copied under new names up to ``size`` cases."""
    from brainmvp_components.data.cohort import make_cohort

    base = root / "base"
    make_cohort(base, "pretrain", base_subjects, seed=0, spacing=spacing)
    cases = sorted(p for p in base.iterdir() if p.is_dir())
    cohorts = {}
    for size in sizes:
        folder = root / f"cohort_{size}"
        for index in range(size):
            source = cases[index % len(cases)]
            target = folder / f"{source.name}-COPY{index // len(cases):03d}"
            target.mkdir(parents=True)
            for image in source.iterdir():
                name = image.name.replace(source.name, target.name)
                shutil.copyfile(image, target / name)
        cohorts[size] = folder
    return cohorts


def run_epoch(cohort: Path, bundle_root: Path, cache: str, extra: list[str]) -> dict:
    """One pre-training epoch in a fresh process; peak tree RSS, seconds to the first iteration, total."""
    configs = "[" + ",".join(f"'{CONFIG_DIR / name}'" for name in ("train.json", "quick.json")) + "]"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(bundle_root),
        "--dataset_dir", str(cohort), "--epochs", "1", "--cache", cache, *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_iteration: list[float] = []
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if not first_iteration and "Iter: 1/" in line:
                first_iteration.append(time.perf_counter() - start)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = harness.watch_tree_peak(process, interval=0.1)
    reader.join(timeout=10)
    if process.returncode != 0:
        raise RuntimeError(f"the {cache!r} run on {cohort} failed:\n" + "".join(lines[-40:]))
    return {
        "peak_rss_gib": peak / 2**30,
        "first_iteration_s": first_iteration[0] if first_iteration else float("nan"),
        "total_s": time.perf_counter() - start,
    }


def run(args: argparse.Namespace) -> int:
    """Every cohort size and caching mode of ``args`` (``scripts/benchmark_data_scale.py``'s arguments)."""
    extra = [a for a in args.extra if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.workdir:  # a new folder per invocation there: new cohorts, empty caches
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix="data_scale_", dir=args.workdir))
        print(f"generating {args.base_subjects} subjects at {args.spacing:g} mm, copies up to {max(args.subjects)}")
        cohorts = make_cohorts(root, args.base_subjects, sorted(set(args.subjects)), args.spacing)
        results = []
        print(f"{'subjects':>8} {'cache':>6} {'peak RSS (GiB)':>14} {'first iteration (s)':>19} {'total (s)':>9}")
        for size in sorted(set(args.subjects)):
            for cache in args.cache:
                figures = run_epoch(cohorts[size], root / f"run_{size}_{cache}", cache, extra)
                results.append({"subjects": size, "cache": cache, **figures})
                print(
                    f"{size:>8} {cache:>6} {figures['peak_rss_gib']:>14.2f} {figures['first_iteration_s']:>19.1f} "
                    f"{figures['total_s']:>9.1f}",
                    flush=True,
                )
    for cache in args.cache:
        peaks = [r["peak_rss_gib"] for r in results if r["cache"] == cache]
        print(f"{cache}: largest / smallest peak RSS = {harness.spread(peaks):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0
