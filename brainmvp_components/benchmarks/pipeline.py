"""End-to-end inference benchmark of the segmentation bundle: NIfTI files in, label NIfTI out, side by side.

Each variant is the bundle's ``inference.json`` with its own configs and overrides, run as ``python -m monai.bundle
run`` runs it (``ConfigWorkflow``: initialise, then run the evaluator over the cases), in a fresh child process so
that its peak resident memory (``ru_maxrss``) is its own. Timed per case, from the moment the data loader is asked
for the case until its label file and record are written (reading the four NIfTI files, re-orientation,
resampling, intensity scaling, cropping to the head, sliding-window inference, inversion to the input grid, label
conversion and writing); the start-up (imports, network, checkpoint) is reported apart. The first case of a
variant also pays one-off work (``torch.compile``, OpenVINO's compilation, lazy allocations), so each variant
segments ``--cases`` copies of the volume and reports the first case and the mean of the others.

The volume is one case of the embedded BraTS-style cohort built at 1 mm on the BraTS atlas grid
(``4 x 240 x 240 x 155``, real anatomy with a tumour, the background zero as in BraTS), written once into
``--work-dir``. Weights are random (seeded), which changes nothing in the timing; the exported variants export
that same checkpoint with the bundle's ``onnx_export`` command.

Variants (:data:`VARIANTS`; any subset with ``--variants``):

- ``eager``: ``inference.json`` as it is (float32 PyTorch, crop to the head, window ``96^3``, overlap 0.5);
- ``eager_full_volume``: the same without the crop to the head (the whole ``240 x 240 x 155`` grid is windowed);
- ``compiled``: ``--compile True --bf16 True`` (``torch.compile`` with frozen weights and bfloat16 autocast);
- ``onnxruntime``: ``inference_onnx.json`` (ONNX Runtime, CPU execution provider, float32);
- ``openvino_f32``: ``inference_openvino.json`` with ``--openvino_precision f32``;
- ``openvino``: ``inference_openvino.json`` (OpenVINO with its CPU default precision: bfloat16 where the CPU has it);
- ``segresnet``: the model zoo's ``brats_mri_segmentation`` network (MONAI ``SegResNet``, blocks 1-2-2-4, 16
  filters) and its inferer settings (one ``240 x 240 x 160`` window, overlap 0.5) in the same pipeline: the anchor a
  user would otherwise pick.

Results are printed as a table with each variant's per-case seconds relative to ``eager`` and written as JSON.
``scripts/benchmark_pipeline.py`` is the command line; ``docs/benchmarks.md`` records runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainmvp_components.benchmarks import harness
from brainmvp_components.benchmarks.harness import GIB

__all__ = ["VARIANTS", "main", "prepare_bundle", "prepare_cases", "report", "run_variant"]

REPO_ROOT = harness.PACKAGE_ROOT
SEG_BUNDLE = REPO_ROOT / "bundles" / "brainmvp_brats_seg"
CHILD_FLAG = "--child"
RESULT_TAG = "PIPELINE_RESULT "

SEGRESNET = {
    "network_def": {
        "_target_": "SegResNet",
        "blocks_down": [1, 2, 2, 4],
        "blocks_up": [1, 1, 1],
        "init_filters": 16,
        "in_channels": 4,
        "out_channels": 3,
        "dropout_prob": 0.2,
    },
    "roi_size": [240, 240, 160],
    "sw_batch_size": 1,
    "sw_overlap": 0.5,
}
"""The model zoo's ``brats_mri_segmentation`` network and inferer settings (its ``configs/inference.json``)."""

VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {"configs": [], "overrides": {}},
    "eager_full_volume": {"configs": [], "overrides": {"crop_foreground": False}},
    "compiled": {"configs": [], "overrides": {"compile": True, "bf16": True}},
    "onnxruntime": {"configs": ["inference_onnx.json"], "overrides": {}},
    "openvino_f32": {"configs": ["inference_openvino.json"], "overrides": {"openvino_precision": "f32"}},
    "openvino": {"configs": ["inference_openvino.json"], "overrides": {}},
    "segresnet": {"configs": [], "overrides": SEGRESNET, "network": "segresnet"},
}
"""Each variant's extra config files (after ``inference.json`` and ``--extra-configs``) and overrides."""


def prepare_cases(work_dir: Path, copies: int, spacing: float = 1.0) -> Path:
    """A folder of ``copies`` case folders holding the same four-modality volume (built once at ``spacing``)."""
    from brainmvp_components.data.cohort import make_cohort

    source = work_dir / f"source_{spacing:g}mm"
    if not any(source.glob("*/*_flair.nii.gz")):
        shutil.rmtree(source, ignore_errors=True)
        make_cohort(source, "brats", 1, seed=0, spacing=spacing)
    (case_dir,) = [p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")]
    cases = work_dir / f"cases_{spacing:g}mm_x{copies}"
    for k in range(copies):
        folder = cases / f"case{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in case_dir.glob("*.nii.gz"):
            if "_seg" in path.name:
                continue
            target = folder / path.name.replace(case_dir.name, f"case{k}")
            if not target.exists():
                target.symlink_to(path.resolve())
    return cases


def prepare_bundle(work_dir: Path, network: str, extra_configs: Sequence[str], seed: int = 0) -> Path:
    """A bundle folder (the segmentation bundle's configs, linked) holding ``models/model.pt``: random weights of
    the ``network`` (``"bundle"``: ``inference.json``'s ``network_def`` under ``extra_configs``; ``"segresnet"``)."""
    import torch
    from monai.bundle import ConfigParser

    root = work_dir / f"bundle_{network}{'_' + '_'.join(Path(c).stem for c in extra_configs) if extra_configs else ''}"
    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "configs").exists():
        (root / "configs").symlink_to(SEG_BUNDLE / "configs")
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        parser = ConfigParser()
        parser.read_config([str(SEG_BUNDLE / "configs" / "inference.json"), *map(str, extra_configs)])
        if network == "segresnet":
            parser["network_def"] = SEGRESNET["network_def"]
        torch.manual_seed(seed)
        torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), weights)
    return root


def _export(root: Path, extra_configs: Sequence[str]) -> None:
    """Write ``models/model.onnx`` with the command the bundle's ONNX configs name."""
    if (root / "models" / "model.onnx").is_file():
        return
    from brainmvp_components.inference.onnx_network import onnx_export_command

    configs = [str(root / "configs" / "inference.json"), *map(str, extra_configs)]
    command = onnx_export_command(root / "models" / "model.onnx", root / "models" / "model.pt", configs,
                                  [1, 4, *_roi_size(extra_configs)])  # fmt: skip
    subprocess.run(command, shell=True, check=True, cwd=REPO_ROOT, env=harness.child_env(), capture_output=True)


def _roi_size(extra_configs: Sequence[str]) -> list[int]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(SEG_BUNDLE / "configs" / "inference.json"), *map(str, extra_configs)])
    return [int(s) for s in parser.get_parsed_content("roi_size")]


class _CaseClock:
    """Per-case wall seconds: from asking the loader for a case to the end of its post-processing (writing)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._begin)
        # registered after the evaluator's post-processing handler, so it fires after the files are written
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._end)

    def _begin(self, engine: Any) -> None:
        self._start = time.perf_counter()

    def _end(self, engine: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def run_variant(cfg: dict) -> dict:
    """One variant in this process: initialise the bundle's workflow, segment every case, time them."""
    import torch
    from monai.bundle import ConfigWorkflow

    torch.set_num_threads(int(cfg["threads"]))
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=cfg["configs"],
        meta_file=str(SEG_BUNDLE / "configs" / "metadata.json"),
        workflow_type="inference",
        bundle_root=cfg["bundle_root"],
        dataset_dir=cfg["dataset_dir"],
        output_dir=cfg["output_dir"],
        overwrite=True,
        **cfg["overrides"],
    )
    workflow.initialize()
    clock = _CaseClock()
    clock.attach(workflow.parser.get_parsed_content("evaluator"))
    setup = time.perf_counter() - start
    workflow.run()
    if not clock.seconds:
        raise RuntimeError(f"variant {cfg['variant']} segmented no case")
    rest = clock.seconds[1:]
    return {
        "setup_s": setup,
        "first_case_s": clock.seconds[0],
        "case_s": sum(rest) / len(rest) if rest else clock.seconds[0],
        "cases": len(clock.seconds),
        "peak_rss_gib": harness.max_rss_bytes() / GIB,
    }


def plan(args: argparse.Namespace) -> list[dict]:
    """The child configurations of the chosen variants (bundles and exports prepared here)."""
    cases = prepare_cases(args.work_dir, args.cases, args.spacing)
    extra = [str(Path(c).resolve()) for c in args.extra_configs]
    configs = []
    for name in args.variants:
        variant = VARIANTS[name]
        root = prepare_bundle(args.work_dir, variant.get("network", "bundle"), extra)
        files = [str(SEG_BUNDLE / "configs" / "inference.json"), *extra]
        files += [str(SEG_BUNDLE / "configs" / c) for c in variant["configs"]]
        if variant["configs"]:
            _export(root, extra)
        configs.append(
            {
                "variant": name,
                "configs": files,
                "overrides": variant["overrides"],
                "bundle_root": str(root),
                "dataset_dir": str(cases),
                "output_dir": str(args.work_dir / "outputs" / name),
                "threads": args.threads,
            }
        )
    return configs


def report(results: list[dict]) -> str:
    """The side-by-side table: seconds per case (first and later), start-up, peak memory, ratio to ``eager``."""
    best = harness.fastest(results, "variant", "case_s")
    base = best.get("eager", {}).get("case_s")
    rows = []
    for name, row in best.items():
        relative = f"{row['case_s'] / base:.2f}" if base else ""
        rows.append([name, f"{row['case_s']:.1f}", f"{row['first_case_s']:.1f}", f"{row['setup_s']:.1f}",
                     f"{row['peak_rss_gib']:.2f}", relative])  # fmt: skip
    rows += [[r["variant"], f"failed: {r['error']}", "", "", "", ""] for r in results if "case_s" not in r]
    columns = ["variant", "case (s)", "first case (s)", "start-up (s)", "peak RSS (GiB)", "case / eager"]
    return harness.markdown_table(columns, rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants (default: all)")
    parser.add_argument("--work-dir", type=Path, default=Path("benchmark_pipeline"), help="cases, bundles, outputs")
    parser.add_argument("--cases", type=int, default=3, help="copies of the volume each variant segments")
    parser.add_argument("--spacing", type=float, default=1.0, help="grid of the generated case, mm (default 1)")
    parser.add_argument("--extra-configs", nargs="*", default=[], help="config files layered after inference.json")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; each variant's fastest is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each child (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.work_dir = args.work_dir.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == CHILD_FLAG:
        return harness.child_main(argv, CHILD_FLAG, run_variant, RESULT_TAG)
    args = parse_args(argv)
    configs = plan(args)
    results = []
    for round_index, cfg in harness.interleave(configs, args.repeats):
        result = harness.run_child(__name__, CHILD_FLAG, cfg, RESULT_TAG)
        result["round"] = round_index
        shown = f"{result['case_s']:.1f} s per case" if "case_s" in result else f"failed: {result.get('error')}"
        print(f"round {round_index + 1}, {cfg['variant']}: {shown}", flush=True)
        results.append(result)
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
