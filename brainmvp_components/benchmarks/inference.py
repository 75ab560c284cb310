"""Benchmark whole-volume sliding-window inference of the BraTS segmentation bundle, side by side.

One random, seeded ``4 x 240 x 240 x 155`` volume (a BraTS case at 1 mm) goes through sliding-window inference
under ``torch.inference_mode()`` for each configuration, each in a fresh subprocess (so that its peak resident
memory, ``ru_maxrss``, is its own; ``torch.cuda.max_memory_allocated`` on CUDA):

- ``ours``: the network of ``bundles/brainmvp_brats_seg/configs/inference.json`` (``network_def``: UniUNet on
  UniFormer-S, 4 modalities in, 3 regions out, random weights from a fixed seed), run by MONAI's
  :class:`~monai.inferers.SlidingWindowInferer`, in the variants below.
- ``authors`` (with ``--authors-repo PATH``, a checkout of shaohao011/BrainMVP; never vendored here): their
  ``Downstream/model/Uni_unet.py`` network built as their ``Downstream/test.py`` builds it
  (``UniUnet(input_shape=96, in_channels=4, out_channels=3, multi_scale=True)``) and run by their own
  ``Downstream/train_utils.py`` ``inference``: their copy of MONAI's sliding window with a ``96^3`` window,
  ``sw_batch_size=1``, overlap 0.5, constant blending, inside ``torch.cuda.amp.autocast()`` (fp16 on CUDA, no
  effect on a CPU). Their code is imported from ``PATH`` in that subprocess only.
- ``segresnet``: the model-zoo ``brats_mri_segmentation`` bundle's network and inferer, as its
  ``configs/inference.json`` sets them: MONAI ``SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1),
  init_filters=16, in_channels=4, out_channels=3, dropout_prob=0.2)``, window ``240 x 240 x 160``,
  ``sw_batch_size=1``, overlap 0.5 (one window for a BraTS volume). Its ``amp`` is a CUDA setting, so fp32 on a
  CPU; random weights.

Our variants are ``+``-joined modifiers (``fp32`` alone is none of them):

- ``fp32``: the bundle's network in fp32 with the authors' inferer settings (the matched comparison);
- ``bundle``: the inferer exactly as the bundle's ``inference.json`` configures it (``sw_batch_size`` 2,
  gaussian blending; the bundle adds CUDA autocast on a GPU);
- ``sw_batch``: ``--sw-batch`` windows per forward (default 4);
- ``channels_last``: model and windows in ``torch.channels_last_3d``;
- ``bf16``: ``torch.autocast`` to bfloat16 (outputs differ from fp32 by the rounding, reported);
- ``compile``: ``torch.compile`` with Inductor's ``freezing`` (weights folded as constants, convolution kernels
  prepacked; compiled during the untimed warm-up; a failure is reported, not raised);
- ``large_window``: window ``--large-roi`` (128) with overlap ``--large-overlap`` (0.25): 18 instead of 48
  windows, other window positions and so other outputs;
- ``glibc_keep`` / ``jemalloc``: the CPU allocator settings of ``docs/benchmarks.md`` in the subprocess'
  environment (glibc without ``mmap``/trimming; Debian's ``libjemalloc2`` by ``LD_PRELOAD`` without decay, one
  arena).

``--windows N`` runs the network on the first ``N`` windows only (all with ``0``); the sliding window still
walks, stitches and averages the whole volume, with the last real output standing in for the skipped windows.
Reported: seconds per window (network), the stitching seconds, and the whole-volume time
``stitching + per window x all windows`` (measured, not scaled, when every window ran), peak memory and the
ratios to the authors and to SegResNet. ``--repeats R`` runs all configurations ``R`` times, interleaved (round
by round), and keeps each one's fastest; the ratios per round give a range.

Equal outputs: ours loads the weights of the authors' network as they are (saved by their subprocess, which runs
first; the layouts and names agree), and the logits of ours and theirs are compared on the timed windows. Each
variant's window outputs are compared with ``fp32``'s (same windows only).

Run by ``scripts/benchmark_inference.py`` (its docstring has examples).

Their code needs ``timm`` (and ``monai``, ``pyyaml``), which this project does not install; without it the
authors' row names the package to install. Results and commands are recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from brainmvp_components.benchmarks import harness
from brainmvp_components.benchmarks.harness import GIB
from brainmvp_components.benchmarks.pretrain_step import RESULT_TAG, authors_missing_package
from brainmvp_components.networks.accelerated import accelerated_inference_network

REPO_ROOT = harness.PACKAGE_ROOT
CHILD_FLAG = "--child"

BUNDLE_INFERENCE = REPO_ROOT / "bundles" / "brainmvp_brats_seg" / "configs" / "inference.json"
FULL_VOLUME = (4, 240, 240, 155)
"""A BraTS case at 1 mm: 4 modalities of 240 x 240 x 155 voxels."""
AUTHORS_INFERER = {"roi": 96, "overlap": 0.5, "sw_batch_size": 1, "mode": "constant"}
"""The authors' ``Downstream/train_utils.py`` ``inference`` (``--patch_shape 96`` in their ``do_test.sh``)."""
SEGRESNET_NETWORK = {
    "blocks_down": (1, 2, 2, 4),
    "blocks_up": (1, 1, 1),
    "init_filters": 16,
    "in_channels": 4,
    "out_channels": 3,
    "dropout_prob": 0.2,
}
"""The model-zoo ``brats_mri_segmentation`` bundle's ``network_def``."""
SEGRESNET_INFERER = {"roi": (240, 240, 160), "overlap": 0.5, "sw_batch_size": 1, "mode": "constant"}
"""The model-zoo ``brats_mri_segmentation`` bundle's ``inferer``."""
MODIFIERS = ("bundle", "sw_batch", "channels_last", "bf16", "compile", "large_window", "glibc_keep", "jemalloc")
DEFAULT_VARIANTS = "fp32,bundle,sw_batch,channels_last,bf16,large_window"
ALLOCATOR_ENV = {
    "glibc_keep": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"},
    "jemalloc": {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1,narenas:1"},
}


# ---------------------------------------------------------------------------------------------- planning
def window_count(spatial: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows of a sliding window over ``spatial`` (MONAI's and the authors' rule).

    Per axis the stride is ``int(roi x (1 - overlap))`` (at least 1) and windows start every stride until one
    reaches the end; an axis no longer than the window (padded up to it) takes one window.
    """
    count = 1
    for size, side in zip(spatial, roi):
        if side >= size:
            continue
        stride = max(int(side * (1 - overlap)), 1)
        count *= math.ceil((size - side) / stride) + 1
    return count


def parse_variant(name: str) -> tuple[str, ...]:
    """The modifiers of a variant name (``"fp32"``: none; ``"bf16+channels_last"``: both), in canonical order."""
    parts = [p for p in name.split("+") if p and p != "fp32"]
    unknown = sorted(set(parts) - set(MODIFIERS))
    if unknown:
        raise ValueError(f"unknown variant modifier(s) {unknown} in {name!r}; choose from fp32, {', '.join(MODIFIERS)}")
    if name.split("+").count("fp32") and parts:
        raise ValueError(f"{name!r}: 'fp32' names the unmodified configuration and joins no modifier")
    return tuple(m for m in MODIFIERS if m in parts)


def bundle_inferer_settings() -> dict:
    """``roi``, ``overlap``, ``sw_batch_size`` and ``mode`` of the segmentation bundle's ``inference.json``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_INFERENCE))
    return {
        "roi": list(parser.get_parsed_content("roi_size")),
        "overlap": float(parser.get_parsed_content("sw_overlap")),
        "sw_batch_size": int(parser.get_parsed_content("sw_batch_size")),
        "mode": str(parser["inferer"]["mode"]),
    }


def inferer_settings(modifiers: Sequence[str], args: argparse.Namespace) -> dict:
    """The sliding-window settings of one of our variants."""
    settings = {"roi": [args.roi] * 3, "overlap": args.overlap, "sw_batch_size": 1, "mode": "constant"}
    if "bundle" in modifiers:
        bundle = bundle_inferer_settings()
        settings.update(sw_batch_size=bundle["sw_batch_size"], mode=bundle["mode"])
    if "sw_batch" in modifiers:
        settings["sw_batch_size"] = args.sw_batch
    if "large_window" in modifiers:
        settings.update(roi=[args.large_roi] * 3, overlap=args.large_overlap)
    return settings


def allocator_env(modifiers: Sequence[str]) -> tuple[dict[str, str], str | None]:
    """Environment additions for the allocator modifiers, and an error when the allocator is absent."""
    env: dict[str, str] = {}
    if "glibc_keep" in modifiers:
        env.update(ALLOCATOR_ENV["glibc_keep"])
    if "jemalloc" in modifiers:
        library = ctypes.util.find_library("jemalloc")
        if library is None:
            return env, "jemalloc not found (Debian: apt-get install libjemalloc2)"
        env.update(ALLOCATOR_ENV["jemalloc"], LD_PRELOAD=library)  # a bare soname: the loader's search path
    return env, None


# ---------------------------------------------------------------------------------------------- networks
def build_our_network(preset: str, in_channels: int) -> torch.nn.Module:
    """The bundle's ``network_def`` from ``inference.json``, on the UniFormer of ``preset`` (``small``: as is)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_INFERENCE))
    parser["input_modalities"] = [f"m{i}" for i in range(in_channels)]
    if preset != "small":
        parser["network_def#encoder#_target_"] = f"brainmvp_components.networks.uniformer_{preset}"
    return parser.get_parsed_content("network_def")


def _import_authors(repo: str) -> tuple[type, Callable] | str:
    """``(UniUnet, inference)`` from the authors' ``Downstream`` folder, or a one-line error."""
    sys.path.insert(0, os.path.join(os.path.abspath(repo), "Downstream"))
    try:
        from model.Uni_unet import UniUnet
        from train_utils import inference
    except ModuleNotFoundError as error:
        return authors_missing_package(repo, error.name or str(error))
    return UniUnet, inference


# ---------------------------------------------------------------------------------------------- child
class WindowLimiter:
    """A sliding-window predictor that runs the network on the first ``limit`` windows only.

    Each call gets a batch of windows; until ``limit`` windows have run, the batch goes through ``forward``
    (timed, with a device synchronisation) and copies of the first ``keep`` window outputs are kept on the CPU.
    Later calls return copies of the last real window output, one per window of the batch, so the inferer still
    walks, weights, stitches and averages the whole volume.
    """

    def __init__(self, forward: Callable, limit: int, keep: int, device: torch.device) -> None:
        self.forward = forward
        self.limit = limit
        self.keep = keep
        self.device = device
        self.windows_seen = 0
        self.windows_run = 0
        self.network_s = 0.0
        self.kept: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None

    def __call__(self, windows: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        n = windows.shape[0]
        self.windows_seen += n
        if self._last is not None and self.windows_run >= self.limit:
            return self._last.repeat(n, *([1] * (self._last.ndim - 1)))  # a fresh tensor: the inferer scales it
        start = time.perf_counter()
        out = self.forward(windows, *args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.network_s += time.perf_counter() - start
        self.windows_run += n
        self._last = out[-1:].detach().clone()
        if len(self.kept) < self.keep:  # copies: the inferer weights the returned windows in place
            self.kept.extend(out[: self.keep - len(self.kept)].detach().float().cpu().clone().unbind(0))
        return out


def run_inference(cfg: dict) -> dict:
    """One configuration of the benchmark (runs inside a fresh subprocess); see the module docstring."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and cfg["rss_limit_gb"]:
        harness.rss_watchdog(cfg["rss_limit_gb"], RESULT_TAG)
    side, modifiers = cfg["side"], tuple(cfg["modifiers"])
    channels, *spatial = cfg["volume"]
    roi = tuple(cfg["roi"])
    result: dict = {}

    torch.manual_seed(cfg["seed"])
    if side == "authors":
        imported = _import_authors(cfg["authors_repo"])
        if isinstance(imported, str):
            return {"error": imported}
        unet_class, authors_inference = imported
        torch.backends.cudnn.benchmark = True
        model = unet_class(input_shape=roi[0], in_channels=channels, out_channels=3, multi_scale=True)
        result["weights"] = "own seeded initialisation"
    elif side == "segresnet":
        from monai.networks.nets import SegResNet

        model = SegResNet(**{**SEGRESNET_NETWORK, "in_channels": channels})
        result["weights"] = "own seeded initialisation"
    else:
        model = build_our_network(cfg["preset"], channels)
        result["weights"] = "own seeded initialisation"
        path = cfg.get("authors_weights_path")
        if path and os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                model.load_state_dict(state, strict=True)
                result["weights"] = "the authors' (loaded as they are)"
            except RuntimeError as error:
                result["weights"] += f"; the authors' do not load: {str(error).splitlines()[0]}"
    model = model.to(device).eval()
    result["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if side == "authors" and cfg.get("save_weights"):
        torch.save(model.state_dict(), cfg["save_weights"])

    generator = torch.Generator().manual_seed(cfg["seed"])
    with torch.inference_mode():  # inference tensors, as the windows are (torch.compile guards on it)
        volume = torch.rand(1, channels, *spatial, generator=generator).to(device)
        warm = torch.rand(cfg["sw_batch_size"], channels, *roi, generator=generator).to(device)
        if "channels_last" in modifiers:
            volume = volume.contiguous(memory_format=torch.channels_last_3d)

    if "channels_last" in modifiers:
        model.to(memory_format=torch.channels_last_3d)
    # the segmentation bundle's own --bf16 / --compile path (authors' and SegResNet runs have neither modifier)
    network = accelerated_inference_network(model, bf16="bf16" in modifiers, compile="compile" in modifiers)

    def forward(windows: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if "channels_last" in modifiers:
            windows = windows.contiguous(memory_format=torch.channels_last_3d)
        elif "compile" in modifiers:  # one window is a strided view of the volume: keep the warm-up's guards
            windows = windows.contiguous()
        return network(windows, *args, **kwargs).float()

    total = window_count(spatial, roi, cfg["overlap"])
    limiter = WindowLimiter(forward, cfg["windows"] or total, cfg["keep_windows"], device)
    if side == "authors":

        def infer(x: torch.Tensor) -> torch.Tensor:
            return authors_inference(x, limiter, patch_shape=roi[0])

    else:
        from monai.inferers import SlidingWindowInferer

        inferer = SlidingWindowInferer(
            roi_size=roi, sw_batch_size=cfg["sw_batch_size"], overlap=cfg["overlap"], mode=cfg["mode"]
        )

        def infer(x: torch.Tensor) -> torch.Tensor:
            return inferer(x, limiter)

    def sync() -> None:
        harness.sync(device)

    before = torch.cuda.memory_allocated() if device.type == "cuda" else harness.current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    phase = "warm-up"
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(cfg["warmup"]):
                forward(warm)
            sync()
            warmup_s = time.perf_counter() - start
            phase = "inference"
            start = time.perf_counter()
            output = infer(volume)
            sync()
            total_s = time.perf_counter() - start
    except Exception as error:  # torch.compile in particular: report, do not raise
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        return {**result, "error": f"{phase} failed: {type(error).__name__}: {message}"}
    peak = harness.peak_memory_bytes(device)

    per_window = limiter.network_s / limiter.windows_run
    scaled = limiter.windows_run < limiter.windows_seen
    stitching = total_s - limiter.network_s
    result.update(
        device=harness.device_name(device),
        memory_kind=harness.memory_kind(device),
        torch=torch.__version__,
        windows_total=limiter.windows_seen,
        windows_planned=total,
        windows_run=limiter.windows_run,
        per_window_s=per_window,
        network_s=limiter.network_s,
        stitching_s=stitching,
        inferer_s=total_s,
        whole_volume_s=stitching + per_window * limiter.windows_seen if scaled else total_s,
        scaled=scaled,
        warmup_s=warmup_s,
        peak_gib=peak / GIB,
        before_gib=before / GIB,
        output_shape=list(output.shape),
        output_finite=bool(torch.isfinite(output).all()),
    )
    if "jemalloc" in modifiers:
        with open("/proc/self/maps") as f:
            result["jemalloc_loaded"] = "jemalloc" in f.read()
    if cfg.get("dump"):
        dump = {"windows": torch.stack(limiter.kept) if limiter.kept else None}
        torch.save(dump, cfg["dump"])
    return result


# ---------------------------------------------------------------------------------------------- parent
def plan_configs(args: argparse.Namespace, dump_dir: str) -> list[dict]:
    """The configurations of one round: the authors' first (ours load their weights), ours, then SegResNet."""
    common = {
        "volume": list(args.volume),
        "windows": args.windows,
        "warmup": args.warmup,
        "threads": args.threads,
        "rss_limit_gb": args.rss_limit_gb,
        "seed": args.seed,
        "keep_windows": args.compare_windows,
    }
    weights = os.path.join(dump_dir, "authors_weights.pt") if args.authors_repo else None
    configs = []
    if args.authors_repo:
        configs.append(
            {
                "side": "authors",
                "variant": "authors",
                "modifiers": [],
                "authors_repo": os.path.abspath(args.authors_repo),
                "preset": "small",
                **{**AUTHORS_INFERER, "roi": [args.roi] * 3},
                "save_weights": weights,
                **common,
            }
        )
    for name in args.variants:
        modifiers = parse_variant(name)
        configs.append(
            {
                "side": "ours",
                "variant": name,
                "modifiers": list(modifiers),
                "preset": args.preset,
                **inferer_settings(modifiers, args),
                "authors_weights_path": weights,
                **common,
            }
        )
    if args.segresnet:
        configs.append(
            {
                "side": "segresnet",
                "variant": "segresnet",
                "modifiers": [],
                "preset": "model zoo",
                **{**SEGRESNET_INFERER, "roi": list(args.segresnet_roi)},
                **common,
            }
        )
    for cfg in configs:
        cfg["dump"] = os.path.join(dump_dir, f"{cfg['variant'].replace('+', '-')}.pt")
    return configs


def run_child(cfg: dict) -> dict:
    """Run one configuration in a fresh subprocess and return its result merged into ``cfg``."""
    env_add, error = allocator_env(cfg["modifiers"])
    if error:
        return {**cfg, "error": error}
    print(f"running inference benchmark: {json.dumps(cfg)}", flush=True)
    return harness.run_child(__name__, CHILD_FLAG, cfg, RESULT_TAG, env=env_add)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Over the windows both kept: their number, the max abs logit difference and the fraction of voxels and
    regions whose segmentation decision (sigmoid >= 0.5, i.e. logit >= 0) agrees."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    return {
        "windows": n,
        "max_abs_diff": float((a - b).abs().max()),
        "label_agreement": float(((a >= 0) == (b >= 0)).float().mean()),
    }


def compare_outputs(configs: list[dict]) -> dict:
    """Max abs differences of the kept window outputs: each of ours against ``fp32`` (same windows only), and
    ours ``fp32`` against the authors' (when ours ran on their weights).

    ``configs``: the first round's results (each with its ``dump`` file).
    """
    loaded = {}
    for cfg in configs:
        if cfg.get("dump") and os.path.isfile(cfg["dump"]):
            loaded[cfg["variant"]] = torch.load(cfg["dump"], weights_only=True)
    by_variant = {cfg["variant"]: cfg for cfg in configs}
    comparisons: dict = {"variants_vs_fp32": {}}
    reference = loaded.get("fp32", {}).get("windows")
    ref_cfg = by_variant.get("fp32")
    for cfg in configs:
        if cfg["side"] != "ours" or cfg["variant"] == "fp32":
            continue
        outputs = loaded.get(cfg["variant"], {}).get("windows")
        entry: dict = {}
        if reference is None or outputs is None:
            entry["note"] = "no outputs to compare (fp32 or this variant did not run)"
        elif (cfg["roi"], cfg["overlap"]) != (ref_cfg["roi"], ref_cfg["overlap"]):
            entry["note"] = "other windows than fp32 (window size or overlap): outputs differ by design"
        else:
            entry.update(_agreement(outputs, reference))
        entry["max_abs_fp32"] = float(reference.abs().max()) if reference is not None else None
        comparisons["variants_vs_fp32"][cfg["variant"]] = entry
    authors = loaded.get("authors", {}).get("windows")
    if "authors" in by_variant:
        entry = {"weights": by_variant.get("fp32", {}).get("weights")}
        if authors is None or reference is None:
            entry["note"] = "no outputs to compare (the authors' or ours fp32 did not run)"
        elif not str(entry["weights"]).startswith("the authors'"):
            entry["note"] = "ours did not run on the authors' weights: outputs not comparable"
        else:
            entry.update(_agreement(reference, authors))
            entry["max_abs_logit"] = float(authors[: entry["windows"]].abs().max())
        comparisons["ours_fp32_vs_authors"] = entry
    return comparisons


def summarise(results: list[dict]) -> dict:
    """Per variant: the fastest round (with its figures) and every round's whole-volume seconds."""
    summary: dict[str, dict] = {}
    for r in results:
        if "error" in r:
            summary.setdefault(r["variant"], {"error": r["error"], "rounds_s": []})
            continue
        entry = summary.setdefault(r["variant"], {"rounds_s": []})
        entry.pop("error", None)
        entry["rounds_s"].append(r["whole_volume_s"])
        if "best" not in entry or r["whole_volume_s"] < entry["best"]["whole_volume_s"]:
            entry["best"] = r
    for variant, entry in summary.items():
        best = entry.get("best")
        if not best:
            continue
        for other, key in (("authors", "vs_authors"), ("segresnet", "vs_segresnet")):
            base = summary.get(other, {}).get("best")
            if base and variant != other:
                ratio = harness.ratio(best, base, ("whole_volume_s", "peak_gib"))
                entry[key] = {"time": ratio["whole_volume_s"], "memory": ratio["peak_gib"]}
        rounds = [
            (r["whole_volume_s"], a["whole_volume_s"])
            for r in results
            if r["variant"] == variant and "error" not in r
            for a in results
            if a["variant"] == "authors" and a["round"] == r["round"] and "error" not in a
        ]
        if rounds and variant != "authors":
            ratios = [ours / theirs for ours, theirs in rounds]
            entry.setdefault("vs_authors", {})["time_per_round"] = [min(ratios), max(ratios)]
    return summary


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


REPORT_COLUMNS = (
    "model", "variant", "window / overlap / sw batch / blending", "windows (run / all)", "per window (s)",
    "stitching (s)", "whole volume (s)", "peak memory (GiB)", "time / authors", "time / SegResNet",
    "max abs diff vs fp32",
)  # fmt: skip


def print_report(args: argparse.Namespace, summary: dict, comparisons: dict) -> None:
    channels, *spatial = args.volume
    shape = " x ".join(str(s) for s in args.volume)
    print(
        f"\n## Whole-volume sliding-window inference: {shape}, ours {args.preset} preset, "
        f"{'all' if not args.windows else args.windows} window(s) timed per configuration, "
        f"best of {args.repeats} round(s)\n"
    )
    print(
        f"full window count for {' x '.join(map(str, spatial))}: {window_count(spatial, [args.roi] * 3, args.overlap)} "
        f"at {args.roi}^3 / overlap {args.overlap}, "
        f"{window_count(spatial, [args.large_roi] * 3, args.large_overlap)} at {args.large_roi}^3 / overlap "
        f"{args.large_overlap}\n"
    )
    print(harness.table_header(REPORT_COLUMNS))
    diffs = comparisons.get("variants_vs_fp32", {})
    for variant, entry in summary.items():
        best = entry.get("best")
        if best is None:
            print(f"| | {variant} | | | | | | | | | {entry['error']} |")
            continue
        model = {"authors": "authors' UniUnet", "segresnet": "SegResNet (model zoo)"}.get(best["side"], "ours UniUNet")
        window = "x".join(str(s) for s in best["roi"]) if len(set(best["roi"])) > 1 else f"{best['roi'][0]}^3"
        settings = f"{window} / {best['overlap']} / {best['sw_batch_size']} / {best['mode']}"
        diff = diffs.get(variant, {})
        diff_text = (
            f"{diff['max_abs_diff']:.2e} (logits to {diff['max_abs_fp32']:.1f}; labels agree on "
            f"{100 * diff['label_agreement']:.3f}% of voxels)"
            if "max_abs_diff" in diff
            else diff.get("note", "")
        )
        ratio_a = entry.get("vs_authors", {})
        ratio_a_text = _fmt(ratio_a.get("time"))
        if len(entry["rounds_s"]) > 1 and "time_per_round" in ratio_a:
            ratio_a_text += " ({:.2f}-{:.2f})".format(*ratio_a["time_per_round"])
        print(
            f"| {model} | {variant} | {settings} | {best['windows_run']} / {best['windows_total']} | "
            f"{best['per_window_s']:.2f} | {best['stitching_s']:.2f} | {best['whole_volume_s']:.1f}"
            f"{'' if best['scaled'] else ' (measured)'} | {best['peak_gib']:.2f} | {ratio_a_text} | "
            f"{_fmt(entry.get('vs_segresnet', {}).get('time'))} | {diff_text} |"
        )
    versus = comparisons.get("ours_fp32_vs_authors")
    if versus:
        if "max_abs_diff" in versus:
            print(
                f"\nequal weights, ours fp32 vs the authors' on {versus['windows']} window(s): max abs logit "
                f"difference {versus['max_abs_diff']:.2e} (logits up to {versus['max_abs_logit']:.1f}), labels agree "
                f"on {100 * versus['label_agreement']:.3f}% of voxels; ours loaded {versus['weights']}"
            )
        else:
            print(f"\nours fp32 vs the authors': {versus['note']} ({versus['weights']})")
    for variant in ("fp32", "authors", "segresnet"):
        best = summary.get(variant, {}).get("best")
        if best:
            print(f"{variant}: {best['parameters_m']:.1f} M parameters, {best['device']}, torch {best['torch']}")
    for variant, entry in summary.items():
        ratio = entry.get("vs_authors")
        if ratio and "time" in ratio:
            print(f"{variant} / authors: whole-volume time {ratio['time']:.2f}x, peak memory {ratio['memory']:.2f}x")


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict:
    """Every configuration (``scripts/benchmark_inference.py``'s arguments), the report printed; its figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, command: {' '.join(sys.argv)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="brainmvp-inference-") as dump_dir:
        configs = plan_configs(args, dump_dir)
        for round_index, cfg in harness.interleave(configs, args.repeats):
            cfg = {**cfg, "round": round_index}
            if round_index:  # outputs and weights are written and compared in the first round only
                cfg.update(dump=None, save_weights=None)
            results.append(run_child(cfg))
        comparisons = compare_outputs([r for r in results if r["round"] == 0])
    summary = summarise(results)
    print_report(args, summary, comparisons)
    report = {
        "command": sys.argv,
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
        "window_counts": {
            "roi": window_count(args.volume[1:], [args.roi] * 3, args.overlap),
            "large_window": window_count(args.volume[1:], [args.large_roi] * 3, args.large_overlap),
            "segresnet": window_count(args.volume[1:], args.segresnet_roi, SEGRESNET_INFERER["overlap"]),
        },
        "results": [
            {k: v for k, v in r.items() if k not in ("dump", "save_weights", "authors_weights_path")} for r in results
        ],
        "summary": {v: {k: e for k, e in entry.items() if k != "best"} for v, entry in summary.items()},
        "comparisons": comparisons,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return report


if __name__ == "__main__":
    sys.exit(harness.child_main(sys.argv[1:], CHILD_FLAG, run_inference, RESULT_TAG))
