"""PNG previews of brain volumes: case montages, tumour overlays, template montages, reconstructions.

Every function takes 3-D arrays in the array order ``(H, W, D)`` of a BraTS-oriented volume (the atlas
affine of :mod:`brainmvp_components.data.atlas`: ``i`` runs right to left, ``j`` anterior to posterior, ``k``
inferior to superior), and shows slices upright in radiological convention (the patient's right on the
left of the panel, anterior at the top of axial slices, superior at the top of coronal slices). A leading
singleton channel axis (``(1, H, W, D)``) and torch tensors are accepted. Figures are drawn with
matplotlib's Agg canvas (no display, no global ``pyplot`` state) and saved atomically (temporary file,
then ``os.replace``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from brainmvp_components.utils.writers import atomic_write

__all__ = [
    "BRATS_REGION_COLOURS",
    "axial_slice",
    "coronal_slice",
    "sagittal_slice",
    "display_range",
    "label_to_rgba",
    "save_case_preview",
    "save_overlay",
    "save_template_montage",
    "save_reconstruction_preview",
    "save_segmentation_comparison",
    "save_template_evolution",
    "save_training_curves",
    "tumour_slice",
]

BRATS_REGION_COLOURS: dict[int, tuple[str, tuple[float, float, float]]] = {
    1: ("necrosis", (0.90, 0.10, 0.10)),
    2: ("oedema", (0.10, 0.80, 0.20)),
    3: ("enhancing", (1.00, 0.85, 0.00)),
    4: ("enhancing", (1.00, 0.85, 0.00)),
}
"""Colour of each BraTS label value (enhancing is 4 in BraTS 2021, 3 in BraTS 2023)."""

_OTHER_COLOURS = ((0.20, 0.50, 1.00), (0.90, 0.30, 0.90), (0.00, 0.90, 0.90), (1.00, 0.55, 0.10))


def _as_volume(array, name: str = "volume") -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor / MetaTensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D (H, W, D) volume (optionally (1, H, W, D)), got shape {array.shape}")
    return array


def axial_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` shown upright: rows anterior to posterior, columns patient right to left."""
    return volume[:, :, k].T


def coronal_slice(volume: np.ndarray, j: int) -> np.ndarray:
    """Coronal slice ``j`` shown upright: rows superior to inferior, columns patient right to left."""
    return volume[:, j, :].T[::-1]


def sagittal_slice(volume: np.ndarray, i: int) -> np.ndarray:
    """Sagittal slice ``i`` shown upright: rows superior to inferior, columns anterior to posterior."""
    return volume[i, :, :].T[::-1]


def display_range(volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """Grey-level window ``(low, high)`` from percentiles of the non-zero (foreground) voxels; ``low`` is 0 for
    non-negative images."""
    values = np.asarray(volume, dtype=np.float32)
    values = values[np.isfinite(values)]
    foreground = values[values != 0]
    if foreground.size == 0:
        foreground = values
    if foreground.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(foreground, [lower, upper])
    if hi <= lo:
        hi = lo + 1.0
    if values.min() >= 0:  # non-negative images (MRI magnitudes): the background stays black
        lo = 0.0
    return float(lo), float(hi)


def label_to_rgba(label_slice: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGBA image of a 2-D label slice: BraTS colours for 1-4, other colours for other values, 0 transparent."""
    rgba = np.zeros(label_slice.shape + (4,), dtype=np.float32)
    others = 0
    for value in np.unique(label_slice):
        if value == 0:
            continue
        if int(value) in BRATS_REGION_COLOURS:
            colour = BRATS_REGION_COLOURS[int(value)][1]
        else:
            colour = _OTHER_COLOURS[others % len(_OTHER_COLOURS)]
            others += 1
        rgba[label_slice == value] = (*colour, alpha)
    return rgba


def _centre_indices(volume: np.ndarray, label: np.ndarray | None = None) -> tuple[int, int, int]:
    """Slice indices showing most of the label (per axis, the slice with the largest labelled area), else
    through the centre of the foreground."""
    if label is not None and label.any():
        present = label != 0
        return tuple(int(np.argmax(present.sum(axis=tuple(b for b in range(3) if b != a)))) for a in range(3))
    nonzero = np.nonzero(volume)
    if nonzero[0].size:
        return tuple(int(round(float(np.mean(n)))) for n in nonzero)
    return tuple(n // 2 for n in volume.shape)


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, facecolor="black"), suffix=".png")


def _panel(ax, image: np.ndarray, window: tuple[float, float], title: str | None = None, overlay=None) -> None:
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    if overlay is not None:
        ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, color="white", fontsize=9)


def _legend(fig: Figure, label: np.ndarray) -> None:
    present = sorted({int(v) for v in np.unique(label) if v != 0})
    handles, seen = [], set()
    for value in present:
        name, colour = BRATS_REGION_COLOURS.get(value, (f"label {value}", _OTHER_COLOURS[0]))
        if name not in seen:
            seen.add(name)
            handles.append(Patch(color=colour, label=f"{name} ({value})"))
    if handles:
        fig.legend(
            handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white", fontsize=8
        )


def _figure(n_rows: int, n_cols: int, title: str | None, panel_size: float = 2.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel_size * n_cols, panel_size * n_rows + (0.5 if title else 0.2) + 0.3))
    fig.patch.set_facecolor("black")
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    return fig, axes


def save_case_preview(
    volumes: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    label: np.ndarray | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """One PNG of a case: every modality (axial row, coronal row) and, with ``label``, an overlay column.

    Slices pass through the label's centre of mass (the tumour) when a non-empty ``label`` is given, else
    through the centre of the brain.

    Args:
        volumes: ``{name: (H, W, D) array}``, all of one shape.
        path: PNG file to write (folders are created).
        label: optional ``(H, W, D)`` BraTS label map, overlaid on the first modality.
        title: figure title.
    """
    if not volumes:
        raise ValueError(f"save_case_preview({path}): no volumes to show")
    arrays = {name: _as_volume(v, name) for name, v in volumes.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"save_case_preview({path}): volumes differ in shape: {sorted(shapes)}")
    shape = shapes.pop()
    label_array = None
    if label is not None:
        label_array = _as_volume(label, "label")
        if label_array.shape != shape:
            raise ValueError(f"save_case_preview({path}): label shape {label_array.shape} != image shape {shape}")
    first = next(iter(arrays.values()))
    i, j, k = _centre_indices(first, label_array if label_array is not None and label_array.any() else None)
    n_cols = len(arrays) + (1 if label_array is not None else 0)
    fig, axes = _figure(2, n_cols, title)
    for col, (name, volume) in enumerate(arrays.items()):
        window = display_range(volume)
        _panel(axes[0, col], axial_slice(volume, k), window, name)
        _panel(axes[1, col], coronal_slice(volume, j), window)
    if label_array is not None:
        window = display_range(first)
        _panel(axes[0, -1], axial_slice(first, k), window, "label", label_to_rgba(axial_slice(label_array, k)))
        _panel(axes[1, -1], coronal_slice(first, j), window, None, label_to_rgba(coronal_slice(label_array, j)))
        _legend(fig, label_array)
    return _save(fig, path, dpi)


def save_overlay(
    image: np.ndarray, label_map: np.ndarray, path: str | os.PathLike, title: str | None = None, dpi: int = 100
) -> Path:
    """Tumour regions (BraTS label values) over one modality: axial, coronal and sagittal through the tumour.

    Args:
        image: ``(H, W, D)`` image.
        label_map: ``(H, W, D)`` integer labels (0 background).
    """
    volume = _as_volume(image, "image")
    labels = _as_volume(label_map, "label_map")
    if labels.shape != volume.shape:
        raise ValueError(f"save_overlay({path}): label shape {labels.shape} != image shape {volume.shape}")
    i, j, k = _centre_indices(volume, labels if labels.any() else None)
    window = display_range(volume)
    fig, axes = _figure(2, 3, title)
    views = (("axial", axial_slice, k), ("coronal", coronal_slice, j), ("sagittal", sagittal_slice, i))
    for col, (name, view, index) in enumerate(views):
        _panel(axes[0, col], view(volume, index), window, name)
        _panel(axes[1, col], view(volume, index), window, None, label_to_rgba(view(labels, index)))
    _legend(fig, labels)
    return _save(fig, path, dpi)


def save_template_montage(templates: Mapping[str, np.ndarray], path: str | os.PathLike, dpi: int = 100) -> Path:
    """One panel column per modality template: middle axial (top) and coronal (bottom) slices.

    Templates are windowed individually (they live on arbitrary scales, possibly negative).
    """
    if not templates:
        raise ValueError(f"save_template_montage({path}): no templates to show")
    arrays = {name: _as_volume(v, name) for name, v in templates.items()}
    fig, axes = _figure(2, len(arrays), "distilled modality templates")
    for col, (name, volume) in enumerate(arrays.items()):
        lo, hi = np.percentile(volume, [0.5, 99.5]) if volume.size else (0.0, 1.0)
        window = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        i, j, k = (n // 2 for n in volume.shape)
        _panel(axes[0, col], axial_slice(volume, k), window, name)
        _panel(axes[1, col], coronal_slice(volume, j), window)
    return _save(fig, path, dpi)


def reconstruction_panels(volume: Callable[[str], np.ndarray], target: str, fill_b: str) -> dict[str, np.ndarray]:
    """The panels of a BrainMVP reconstruction preview, titled, from ``volume(key)`` for the pre-training terms
    ``target``, ``view_a``, ``view_b``, ``rec_a`` and ``rec_b`` (each ``(H, W, D)``).

    ``target`` names the reconstructed modality, ``fill_b`` the partner modality (or ``"template"``) of view B.
    """
    return {
        f"original ({target})": volume("target"),
        f"view A (template {target})": volume("view_a"),
        f"view B ({fill_b} fill)": volume("view_b"),
        "reconstruction A": volume("rec_a"),
        "reconstruction B": volume("rec_b"),
    }


def save_reconstruction_preview(
    panels: Mapping[str, np.ndarray], path: str | os.PathLike, title: str | None = None, dpi: int = 100
) -> Path:
    """Named 3-D volumes (e.g. input, masked view, reconstruction, target) side by side, middle slices.

    Every volume is shown at the middle axial (top) and coronal (bottom) slice of its own grid; volumes
    share one grey window when their ranges overlap (the usual [0, 1] case), so brightness is comparable.
    """
    if not panels:
        raise ValueError(f"save_reconstruction_preview({path}): no panels to show")
    arrays = {name: _as_volume(v, name).astype(np.float32) for name, v in panels.items()}
    lows, highs = zip(*(np.percentile(a, [0.5, 99.5]) for a in arrays.values()))
    shared = (float(min(lows)), float(max(highs)))
    if shared[1] <= shared[0]:
        shared = (shared[0], shared[0] + 1.0)
    fig, axes = _figure(2, len(arrays), title)
    for col, (name, volume) in enumerate(arrays.items()):
        i, j, k = (n // 2 for n in volume.shape)
        _panel(axes[0, col], axial_slice(volume, k), shared, name)
        _panel(axes[1, col], coronal_slice(volume, j), shared)
    return _save(fig, path, dpi)


def tumour_slice(*label_maps: np.ndarray) -> int:
    """Axial index with the most tumour voxels over all ``label_maps`` (their union), ``-1`` when all are empty."""
    union = None
    for label in label_maps:
        present = _as_volume(label, "label") != 0
        union = present if union is None else union | present
    if union is None or not union.any():
        return -1
    return int(np.argmax(union.sum(axis=(0, 1))))


def save_segmentation_comparison(
    image: np.ndarray,
    reference: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Reference and predictions side by side at the axial slice with the most reference tumour (with an empty
    reference, the most predicted tumour).

    Args:
        image: ``(H, W, D)`` image under the labels.
        reference: ``(H, W, D)`` reference BraTS label map.
        predictions: ``{name: (H, W, D) label map}``, e.g. with all modalities and with one imputed.
        path: PNG file to write.
    """
    volume = _as_volume(image, "image")
    maps = {"reference": _as_volume(reference, "reference")}
    maps.update({name: _as_volume(p, name) for name, p in predictions.items()})
    for name, label in maps.items():
        if label.shape != volume.shape:
            raise ValueError(f"save_segmentation_comparison({path}): {name} shape {label.shape} != {volume.shape}")
    k = tumour_slice(maps["reference"])
    k = tumour_slice(*maps.values()) if k < 0 else k  # no reference tumour: where the predictions put one
    k = volume.shape[2] // 2 if k < 0 else k
    window = display_range(volume)
    fig, axes = _figure(1, len(maps) + 1, title)
    _panel(axes[0, 0], axial_slice(volume, k), window, f"image (slice {k})")
    for col, (name, label) in enumerate(maps.items(), start=1):
        _panel(axes[0, col], axial_slice(volume, k), window, name, label_to_rgba(axial_slice(label, k)))
    _legend(fig, np.concatenate([m.ravel() for m in maps.values()]))
    return _save(fig, path, dpi)


def save_template_evolution(
    snapshots: Mapping[str, Sequence[np.ndarray]], epochs: Sequence[int], path: str | os.PathLike, dpi: int = 100
) -> Path:
    """The templates' evolution: one row per modality, one column per snapshot (initialisation to the end).

    Args:
        snapshots: ``{modality: [2-D slice per snapshot]}``, every list as long as ``epochs``.
        epochs: the epoch of each snapshot (0 = initialisation).
        path: PNG file to write.

    Each panel is windowed on its own (a template's scale changes while it trains); a constant panel (the
    zero initialisation) shows as uniform grey.
    """
    if not snapshots:
        raise ValueError(f"save_template_evolution({path}): no templates to show")
    for name, slices in snapshots.items():
        if len(slices) != len(epochs):
            raise ValueError(
                f"save_template_evolution({path}): {name} has {len(slices)} slices for {len(epochs)} epochs"
            )
    fig, axes = _figure(len(snapshots), len(epochs), "distilled templates, initialisation to end of pre-training", 1.6)
    for row, (name, slices) in enumerate(snapshots.items()):
        for col, (epoch, image) in enumerate(zip(epochs, slices)):
            image = np.asarray(image, dtype=np.float32)
            lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
            window = (float(lo), float(hi)) if hi > lo else (float(lo) - 1.0, float(lo) + 1.0)
            _panel(axes[row, col], np.rot90(image), window, f"epoch {epoch}" if row == 0 else None)
        axes[row, 0].set_axis_on()
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        axes[row, 0].set_ylabel(name, color="white", fontsize=10)
    return _save(fig, path, dpi)


def save_training_curves(
    history: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str | None = None, dpi: int = 100
) -> Path:
    """Training curves from per-epoch records: loss terms (log scale), metrics, and distances (HD95) on their own
    panel so that millimetres do not flatten the scores.

    Args:
        history: one ``{"epoch": int, name: value, ...}`` per record; names containing ``loss`` are losses,
            the others metrics. Records of one epoch may be split (training and validation).
        path: PNG file to write.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in history:
        epoch = int(record["epoch"])
        for name, value in record.items():
            if name == "epoch" or value is None or not np.isfinite(value):
                continue
            xs, ys = series.setdefault(name, ([], []))
            xs.append(epoch)
            ys.append(float(value))
    if not series:
        raise ValueError(f"save_training_curves({path}): no values to plot")
    losses = {n: v for n, v in series.items() if "loss" in n}
    distances = {n: v for n, v in series.items() if "loss" not in n and ("hd" in n or "distance" in n)}
    metrics = {n: v for n, v in series.items() if n not in losses and n not in distances}
    groups = [(g, label) for g, label in ((losses, "loss"), (metrics, "metric"), (distances, "distance (mm)")) if g]
    fig = Figure(figsize=(5.5 * len(groups), 3.8))
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=11)
    for index, (group, label) in enumerate(groups, start=1):
        ax = fig.add_subplot(1, len(groups), index)
        for name, (xs, ys) in sorted(group.items()):
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
        if label == "loss" and all(y > 0 for _, ys in group.values() for y in ys):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), suffix=".png")
