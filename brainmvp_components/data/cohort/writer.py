"""Writing a cohort to disk: BraTS-style case folders of NIfTI files, ADNI ``labels.csv``, optional previews."""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainmvp_components.data.cohort.naming import _FILE_SUFFIX, _check_arguments
from brainmvp_components.data.cohort.sites import SITES_CSV_NAME, assign_sites
from brainmvp_components.data.cohort.subjects import synthesise_subject
from brainmvp_components.utils.writers import atomic_write, write_csv

__all__ = ["PREVIEW_DIR_NAME", "SITES_CSV_NAME", "make_cohort"]

logger = logging.getLogger(__name__)

PREVIEW_DIR_NAME = ".previews"
"""Preview PNGs go to ``out_dir/.previews``: hidden, so case discovery does not take it for a case."""


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 file atomically; gzip without a time stamp so the bytes depend only on the data."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = image.to_bytes()
    if path.name.endswith(".gz"):
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=buffer, mtime=0) as gz:
            gz.write(data)
        data = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _write_labels_csv(rows: list[dict[str, Any]], path: Path) -> None:
    rows = [{**row, "severity": f"{row['severity']:.4f}"} for row in rows]
    write_csv(path, rows, ["case", "label", "diagnosis", "severity"])


def make_cohort(
    out_dir: str | os.PathLike,
    kind: str,
    subjects: int,
    seed: int = 0,
    spacing: float = 2.0,
    missing_rate: float = 0.3,
    label_convention: str = "brats2021",
    preview: bool = False,
    sites: Sequence[str] | None = None,
) -> list[Path]:
    """Generate an embedded cohort of ``subjects`` cases in ``out_dir`` (BraTS-style folders).

    Files per case ``<case>/<case>_<token>.nii.gz`` (float32 images, uint8 ``_seg``), all on
    ``atlas_grid(spacing)``:

    - ``brats``: ``t1``, ``t1ce``, ``t2``, ``flair``, ``seg`` (labels 1 necrosis, 2 oedema, 4 enhancing); with
      ``label_convention="brats2023"``: ``t1n``, ``t1c``, ``t2w``, ``t2f``, ``seg`` (enhancing = 3).
    - ``pretrain``: a random non-empty subset of ``t1``, ``t1c``, ``t2``, ``flair``, ``pd`` (each absent with
      probability ``missing_rate``; named by ``label_convention``), no segmentation.
    - ``adni``: ``t1`` only, plus ``out_dir/labels.csv`` with columns ``case,label,diagnosis,severity``
      (0 CN, 1 AD).

    ``preview=True`` also writes one PNG per case to ``out_dir/.previews/<case>.png``.

    ``sites`` (names of :data:`~brainmvp_components.data.cohort.sites.SITES`) images subject ``i`` with the
    protocol of ``sites[i % len(sites)]`` (repeat a name to give a site more subjects) and writes
    ``out_dir/sites.csv`` (columns ``case,site``), which :func:`~brainmvp_components.data.datalist.build_datalist`
    copies into every datalist entry. ``None``: the nominal protocol, no ``sites.csv``.

    Returns:
        the case folders, in index order.

    Raises:
        ValueError: unknown ``kind``/``label_convention``/site, ``subjects < 1``, bad ``spacing`` or
            ``missing_rate``.
    """
    _check_arguments(kind, spacing, missing_rate, label_convention)
    if int(subjects) != subjects or subjects < 1:
        raise ValueError(f"subjects must be a positive integer, got {subjects!r}")
    site_of = assign_sites(int(subjects), list(sites)) if sites else [None] * int(subjects)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"cohort output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if preview:
        from brainmvp_components.visualize.previews import save_case_preview

    logger.info(
        "generating %d %r subjects (seed %d, %.3g mm, %s) in %s",
        subjects,
        kind,
        seed,
        spacing,
        label_convention,
        out_dir,
    )
    cases: list[Path] = []
    rows: list[dict[str, Any]] = []
    for index in range(int(subjects)):
        subject = synthesise_subject(
            kind,
            index,
            seed=seed,
            spacing=spacing,
            missing_rate=missing_rate,
            label_convention=label_convention,
            site=site_of[index],
        )
        case = subject["case"]
        case_dir = out_dir / case
        case_dir.mkdir(exist_ok=True)
        for modality, image in subject["images"].items():
            _write_nifti(
                image, subject["affine"], case_dir / f"{case}_{_FILE_SUFFIX[label_convention][modality]}.nii.gz"
            )
        if kind == "brats":
            _write_nifti(subject["label"], subject["affine"], case_dir / f"{case}_seg.nii.gz")
        if kind == "adni":
            rows.append(
                {
                    "case": case,
                    "label": subject["class_label"],
                    "diagnosis": subject["diagnosis"],
                    "severity": subject["severity"],
                }
            )
        if preview:
            save_case_preview(
                subject["images"],
                out_dir / PREVIEW_DIR_NAME / f"{case}.png",
                label=subject["label"] if subject["n_tumours"] else None,
                title=f"{case} ({kind})" if site_of[index] is None else f"{case} ({kind}, site {site_of[index]})",
            )
        cases.append(case_dir)
        detail = (
            f"{subject['diagnosis']} severity {subject['severity']:.2f}"
            if kind == "adni"
            else f"{subject['n_tumours']} tumour(s)"
        )
        if site_of[index] is not None:
            detail += f"; site {site_of[index]}"
        logger.info("[%d/%d] %s: %s; %s", index + 1, subjects, case, ", ".join(sorted(subject["images"])), detail)
    if kind == "adni":
        _write_labels_csv(rows, out_dir / "labels.csv")
    if sites:
        site_rows = [{"case": c.name, "site": s} for c, s in zip(cases, site_of)]
        write_csv(out_dir / SITES_CSV_NAME, site_rows, ["case", "site"])
    return cases
