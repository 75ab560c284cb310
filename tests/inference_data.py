"""Generated inputs for the inference robustness and registration tests: cohort cases moved off the atlas frame,
broken copies, and templates made from cohort means."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brainmvp_components.data.modalities import modality_from_filename

MODALITIES = ["t1", "t1c", "t2", "flair"]


def files_of(case_dir: Path) -> dict[str, Path]:
    return {modality_from_filename(p): p for p in case_dir.glob("*.nii.gz") if modality_from_filename(p)}


def moved_copy(case_dir: Path, out_dir: Path, modalities=("t1", "t1c", "flair")) -> Path:
    """The case moved off the atlas frame: shifted 30 mm, rotated 15 degrees about two axes, scaled by 0.9, its
    world origin at the brain's centre (as MNI-frame scans have it), written on an LAS grid of 2.5 mm voxels."""
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    out_dir.mkdir(parents=True)
    angle = np.deg2rad(15)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    files = files_of(case_dir)
    for modality in modalities:
        image = nib.load(files[modality])
        centre = image.affine[:3, :3] @ ((np.array(image.shape) - 1) / 2) + image.affine[:3, 3]
        move = np.eye(4)
        move[:3, :3] = 0.9 * rotation
        move[:3, 3] = -move[:3, :3] @ centre + np.array([30.0, 0.0, 0.0])
        source = MetaTensor(
            torch.from_numpy(image.get_fdata(dtype=np.float32))[None], affine=torch.as_tensor(move @ image.affine)
        )
        shape = (80, 96, 80)
        grid = np.diag([-2.5, 2.5, 2.5, 1.0])  # LAS
        grid[:3, 3] = np.array([30.0, 0.0, 0.0]) - grid[:3, :3] @ ((np.array(shape) - 1) / 2)
        moved = SpatialResample(mode="bilinear", padding_mode="zeros")(
            source, dst_affine=torch.as_tensor(grid), spatial_size=shape
        )
        nib.save(nib.Nifti1Image(np.asarray(moved[0], dtype=np.float32), grid), out_dir / files[modality].name)
    return out_dir


def mean_templates(cases: list[Path]):
    """Templates on the atlas grid of the cohort: the mean of the given cases, per modality."""
    from brainmvp_components.networks.templates import ModalityTemplates

    stacks = {m: [] for m in MODALITIES}
    affine = None
    for case in cases:
        for modality, path in files_of(case).items():
            image = nib.load(path)
            stacks[modality].append(image.get_fdata(dtype=np.float32))
            affine = image.affine
    volumes = np.stack([np.mean(stacks[m], axis=0) for m in MODALITIES])
    templates = ModalityTemplates(MODALITIES, spatial_shape=volumes.shape[1:], affine=affine)
    with torch.no_grad():
        templates.weight.copy_(torch.from_numpy(volumes))
    return templates


def copy_case(source: Path, dest: Path, name: str) -> Path:
    """A copy of a cohort case under a new name (files renamed too)."""
    out = dest / name
    out.mkdir(parents=True)
    for path in source.glob("*.nii.gz"):
        if modality_from_filename(path):
            shutil.copy(path, out / path.name.replace(source.name, name))
    return out


def edit_volume(path: Path, change) -> None:
    image = nib.load(path)
    data = image.get_fdata(dtype=np.float32)
    nib.save(nib.Nifti1Image(change(data), image.affine), path)


def file_of(case_dir: Path, modality: str) -> Path:
    return files_of(case_dir)[modality]
