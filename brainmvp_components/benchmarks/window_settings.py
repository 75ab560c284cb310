"""Sliding-window settings, speed against accuracy, on a trained segmentation bundle and labelled cases.

Each setting (:data:`SETTINGS`) is the bundle's ``inference.json`` (and ``--extra-configs``) with a few overrides:
window overlap, blending mode, windows per forward pass, window size. Each runs as the bundle runs it (a
``ConfigWorkflow`` in a fresh child process, timed per case as :mod:`brainmvp_components.benchmarks.pipeline` times
it) on the labelled cases of a datalist's test split; its label maps are scored with BraTS region Dice against the
references and compared with the default setting's (mean Dice difference per region, share of voxels labelled
differently). A setting holds Dice when every region's mean is within ``tolerance`` (0.005) of the default's.

Test-time flips are not among the settings: the bundle does not flip at test time (each flip would multiply the
windows, and so the time, by its count), so its default stays without them.

``scripts/benchmark_window_settings.py`` is the command line; ``docs/benchmarks.md`` records runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from brainmvp_components.benchmarks import harness
from brainmvp_components.benchmarks.exported_agreement import REGIONS, agreement_rows, labelled_test_cases
from brainmvp_components.benchmarks.pipeline import SEG_BUNDLE, run_variant

__all__ = ["SETTINGS", "main", "report", "setting_overrides"]

CHILD_FLAG = "--child"
RESULT_TAG = "WINDOW_SETTING_RESULT "
DEFAULT = "default"
TIMING_KEYS = ("setup_s", "first_case_s", "case_s", "cases", "peak_rss_gib")


def _larger_window(defaults: Mapping[str, Any]) -> dict[str, Any]:
    # UniFormer's stages downsample by 32 in all: the window grows by one stage-4 token per side
    return {"roi_size": [int(s) + 32 for s in defaults["roi_size"]]}


SETTINGS: dict[str, dict[str, Any] | Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    DEFAULT: {},
    "overlap 0.25": {"sw_overlap": 0.25},
    "overlap 0.5": {"sw_overlap": 0.5},
    "overlap 0.75": {"sw_overlap": 0.75},
    "constant blending": {"inferer#mode": "constant"},
    "1 window per forward": {"sw_batch_size": 1},
    "4 windows per forward": {"sw_batch_size": 4},
    "window +32": _larger_window,
}
"""Setting name -> overrides of the bundle's config, or a function of the defaults (``roi_size``, ``sw_overlap``,
``sw_batch_size``) returning them."""


def bundle_defaults(configs: Sequence[str]) -> dict[str, Any]:
    """The window settings of ``configs`` (``inference.json`` and the extra configs, in order)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(configs))
    return {
        "roi_size": [int(s) for s in parser.get_parsed_content("roi_size")],
        "sw_overlap": float(parser.get_parsed_content("sw_overlap")),
        "sw_batch_size": int(parser.get_parsed_content("sw_batch_size")),
        "mode": str(parser["inferer"]["mode"]),
    }


def setting_overrides(name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides of setting ``name`` given the bundle's ``defaults`` (see :func:`bundle_defaults`)."""
    spec = SETTINGS[name]
    return dict(spec(defaults) if callable(spec) else spec)


def describe(overrides: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The settings a run used, in words: ``96^3, overlap 0.5, gaussian, 2 per forward``."""
    roi = overrides.get("roi_size", defaults["roi_size"])
    size = f"{roi[0]}^3" if len(set(roi)) == 1 else "x".join(map(str, roi))
    overlap = overrides.get("sw_overlap", defaults["sw_overlap"])
    mode = overrides.get("inferer#mode", defaults["mode"])
    batch = overrides.get("sw_batch_size", defaults["sw_batch_size"])
    return f"{size}, overlap {overlap:g}, {mode}, {batch} per forward"


def report(rows: Sequence[Mapping[str, Any]], tolerance: float) -> str:
    """Markdown table: each setting's seconds per case and ratio to the default's, Dice, and agreement."""
    base = next((r["case_s"] for r in rows if r["setting"] == DEFAULT), None)
    columns = ["setting", "windows", "case (s)", "case / default", "Dice TC", "Dice WT", "Dice ET",
               "largest Dice difference", "voxels labelled differently", f"holds Dice (<= {tolerance})"]  # fmt: skip
    table = []
    for row in rows:
        largest = max(abs(row[f"diff_{r}"]) for r in REGIONS)
        relative = f"{row['case_s'] / base:.2f}" if base else ""
        dice = [f"{row[f'dice_{r}']:.4f}" for r in REGIONS]
        holds = "yes" if largest <= tolerance else "NO"
        table.append([row["setting"], row["describe"], f"{row['case_s']:.2f}", relative, *dice, f"{largest:.4f}",
                      f"{row['voxels_differing']:.4%}", holds])  # fmt: skip
    return harness.markdown_table(columns, table)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle-root", required=True, type=Path, help="trained bundle folder (models/model.pt)")
    parser.add_argument("--datalist", required=True, type=Path, help="datalist whose test split holds labels")
    parser.add_argument("--work-dir", required=True, type=Path, help="where each setting's predictions go")
    parser.add_argument("--extra-configs", nargs="*", default=[], help="configs after inference.json (quick.json)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; each setting's fastest is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each child (default 2)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="largest Dice difference that holds Dice")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    if DEFAULT not in args.settings:
        args.settings.insert(0, DEFAULT)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every setting, print the table; exit 1 when a run fails."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == CHILD_FLAG:
        return harness.child_main(argv, CHILD_FLAG, run_variant, RESULT_TAG)
    args = parse_args(argv)
    references = labelled_test_cases(args.bundle_root, args.datalist)
    work = args.work_dir.resolve()
    configs = [str(SEG_BUNDLE / "configs" / "inference.json"), *(str(Path(c).resolve()) for c in args.extra_configs)]
    defaults = bundle_defaults(configs)
    children = []
    for name in args.settings:
        overrides = setting_overrides(name, defaults)
        children.append({
            "variant": name,
            "configs": configs,
            "overrides": {**overrides, "datalist": str(args.datalist.resolve())},
            "bundle_root": str(args.bundle_root.resolve()),
            "dataset_dir": str(args.datalist.resolve().parent),
            "output_dir": str(work / name.replace(" ", "_")),
            "threads": args.threads,
            "describe": describe(overrides, defaults),
        })  # fmt: skip
    timings: list[dict] = []
    for round_index, child in harness.interleave(children, args.repeats):
        result = harness.run_child(__name__, CHILD_FLAG, child, RESULT_TAG)
        if "error" in result:
            print(f"{child['variant']} failed: {result['error']}", file=sys.stderr)
            return 1
        print(f"round {round_index + 1}, {child['variant']}: {result['case_s']:.2f} s per case", flush=True)
        timings.append(result)
    fastest = harness.fastest(timings, "variant", "case_s")
    folders = {c["variant"]: Path(c["output_dir"]) for c in children}
    rows = []
    for dice_row in agreement_rows(folders, references, reference_run=DEFAULT):
        name = dice_row.pop("run")
        child = next(c for c in children if c["variant"] == name)
        timing = {key: fastest[name][key] for key in TIMING_KEYS}
        rows.append({"setting": name, "describe": child["describe"], **dice_row, **timing})
    print(report(rows, args.tolerance))
    if args.json:
        from brainmvp_components.utils.writers import write_json

        write_json(args.json, {"tolerance": args.tolerance, "defaults": defaults, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
