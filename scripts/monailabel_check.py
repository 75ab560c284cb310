"""Helpers of ``scripts/monailabel_check.sh``: the data, the bundle and the comparisons of the MONAI Label check.

Subcommands (each prints what it wrote or found; exit status 0 on success, 1 when a comparison fails)::

    python scripts/monailabel_check.py studies --cohort DIR --out DIR [--cases N]
    python scripts/monailabel_check.py templates --out DIR [--spacing MM]
    python scripts/monailabel_check.py bake --trained DIR --out DIR
    python scripts/monailabel_check.py compare --label FILE --reference FILE --image FILE
    python scripts/monailabel_check.py digest --file FILE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

# the bundle's input order and the BraTS 2021 file tokens of the embedded cohort
MODALITY_TOKENS = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
NETWORK_SETTINGS = "quick.json"


def write_studies(cohort: Path, out: Path, cases: int) -> list[str]:
    """MONAI Label studies from a BraTS-style cohort: one 4-D NIfTI per case (channels t1, t1c, t2, flair) in
    ``out`` and its label map in ``out/labels/final`` under the same name."""
    labels = out / "labels" / "final"
    labels.mkdir(parents=True, exist_ok=True)
    names = []
    for case_dir in sorted(p for p in cohort.iterdir() if p.is_dir())[:cases]:
        volumes = []
        for token in MODALITY_TOKENS.values():
            found = sorted(case_dir.glob(f"*_{token}.nii.gz"))
            if not found:
                raise FileNotFoundError(f"{case_dir}: no *_{token}.nii.gz file")
            volumes.append(nib.load(str(found[0])))
        seg = sorted(case_dir.glob("*_seg.nii.gz"))
        if not seg:
            raise FileNotFoundError(f"{case_dir}: no *_seg.nii.gz label")
        stack = np.stack([v.get_fdata(dtype=np.float32) for v in volumes], -1)
        nib.save(nib.Nifti1Image(stack, volumes[0].affine), str(out / f"{case_dir.name}.nii.gz"))
        shutil.copyfile(seg[0], labels / f"{case_dir.name}.nii.gz")
        names.append(case_dir.name)
    if not names:
        raise FileNotFoundError(f"{cohort}: no case folders")
    return names


def write_templates(out: Path, spacing: float) -> None:
    """Stand-in distilled templates (uniform noise on the atlas grid) for a check run without pre-training."""
    import torch

    from brainmvp_components.data.atlas import atlas_grid
    from brainmvp_components.networks.templates import ModalityTemplates

    torch.manual_seed(0)
    shape, affine = atlas_grid(spacing)
    templates = ModalityTemplates(list(MODALITY_TOKENS), spatial_shape=shape, affine=affine)
    with torch.no_grad():
        templates.weight.uniform_(0, 1)
    templates.export_nifti(out, montage=False)


def bake(trained: Path, out: Path) -> None:
    """A servable copy of a bundle trained with ``quick.json``: the settings of ``quick.json`` that
    ``train.json`` and ``inference.json`` define are written into them (MONAI Label reads those two alone), and
    ``models/model.pt`` and ``models/templates`` are copied; checkpoints, logs and data are left behind."""
    from monai.bundle import ConfigParser

    configs = trained / "configs"
    overrides = json.loads((configs / NETWORK_SETTINGS).read_text())
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for item in ("LICENSE", "docs"):
        source = trained / item
        if source.is_dir():
            shutil.copytree(source, out / item, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copyfile(source, out / item)
    for config in sorted(configs.iterdir()):
        if config.name in ("train.json", "inference.json"):
            parser = ConfigParser()
            parser.read_config(str(config))
            for key, value in overrides.items():
                if key in parser:
                    parser[key] = value
            ConfigParser.export_config_file(parser.get(), str(out / "configs" / config.name), indent=4)
        elif config.name != NETWORK_SETTINGS:
            shutil.copyfile(config, out / "configs" / config.name)
    (out / "models").mkdir(exist_ok=True)
    shutil.copyfile(trained / "models" / "model.pt", out / "models" / "model.pt")
    shutil.copytree(trained / "models" / "templates", out / "models" / "templates", dirs_exist_ok=True)


def compare(label: Path, reference: Path, image: Path) -> list[str]:
    """Problems of ``label`` against the ``reference`` prediction and the input ``image``'s grid (``[]``: none)."""
    problems = []
    got, ref, img = (nib.load(str(p)) for p in (label, reference, image))
    got_data, ref_data = np.squeeze(np.asarray(got.dataobj)), np.squeeze(np.asarray(ref.dataobj))
    if got_data.shape != tuple(img.shape[:3]):
        problems.append(f"label shape {got_data.shape} is not the image's grid {tuple(img.shape[:3])}")
    if not np.allclose(got.affine, img.affine, atol=1e-4):
        problems.append(f"label affine\n{got.affine}\nis not the image's\n{img.affine}")
    if got_data.shape != ref_data.shape:
        problems.append(f"label shape {got_data.shape} differs from monai.bundle run's {ref_data.shape}")
    elif not np.array_equal(got_data.astype(np.int64), ref_data.astype(np.int64)):
        differ = int(np.count_nonzero(got_data.astype(np.int64) != ref_data.astype(np.int64)))
        problems.append(f"{differ} of {got_data.size} voxels differ from monai.bundle run's label")
    values = sorted(int(v) for v in np.unique(got_data))
    print(f"label {label.name}: shape {got_data.shape}, values {values}")
    return problems


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("studies", help="4-D studies and labels for MONAI Label's datastore")
    p.add_argument("--cohort", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", type=int, default=5)
    p = sub.add_parser("templates", help="stand-in modality templates")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--spacing", type=float, default=2.0)
    p = sub.add_parser("bake", help="a servable copy of a quick-trained bundle")
    p.add_argument("--trained", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("compare", help="MONAI Label's label against monai.bundle run's")
    p.add_argument("--label", type=Path, required=True)
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True)
    p = sub.add_parser("digest", help="SHA-256 of a file")
    p.add_argument("--file", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "studies":
        print(" ".join(write_studies(args.cohort, args.out, args.cases)))
    elif args.command == "templates":
        write_templates(args.out, args.spacing)
    elif args.command == "bake":
        bake(args.trained, args.out)
    elif args.command == "compare":
        problems = compare(args.label, args.reference, args.image)
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    elif args.command == "digest":
        print(digest(args.file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
