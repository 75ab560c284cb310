"""The embedded cohort: determinism, file layout, MR contrast relations, missing modalities, atrophy, previews."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainmvp_components.data.atlas import atlas_grid
from brainmvp_components.data.cohort import (
    COHORT_MODALITIES,
    PREVIEW_DIR_NAME,
    label_values,
    make_cohort,
    subject_design,
    synthesise_subject,
)
from brainmvp_components.data.modalities import is_segmentation_file, modality_from_filename

SHAPE_2MM, AFFINE_2MM = atlas_grid(2.0)


@pytest.fixture(scope="module")
def brats_subject() -> dict:
    return synthesise_subject("brats", 1, seed=0, spacing=2.0)


def _pure_mean(image: np.ndarray, fraction: np.ndarray, threshold: float = 0.9) -> float:
    voxels = image[fraction > threshold]
    assert voxels.size > 20, "too few pure voxels to measure a tissue mean"
    return float(voxels.mean())


def _best_threshold_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best single threshold (either direction) separating two classes."""
    best = 0.0
    for t in np.concatenate([values, [values.min() - 1]]):
        predicted = values > t
        best = max(best, float(np.mean(predicted == labels)), float(np.mean(predicted != labels)))
    return best


def test_same_seed_same_arrays_different_seed_different(brats_subject):
    again = synthesise_subject("brats", 1, seed=0, spacing=2.0)
    other = synthesise_subject("brats", 1, seed=1, spacing=2.0)
    for modality in ("t1", "t1c", "t2", "flair"):
        np.testing.assert_array_equal(brats_subject["images"][modality], again["images"][modality])
        assert not np.array_equal(brats_subject["images"][modality], other["images"][modality])
    np.testing.assert_array_equal(brats_subject["label"], again["label"])


def test_same_seed_same_bytes_and_independent_of_count(tmp_path):
    one = make_cohort(tmp_path / "a", "pretrain", 1, seed=3)
    two = make_cohort(tmp_path / "b", "pretrain", 2, seed=3)
    files_one = sorted(one[0].iterdir())
    files_two = sorted(two[0].iterdir())
    assert [f.name for f in files_one] == [f.name for f in files_two]
    for a, b in zip(files_one, files_two):
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest(), a.name


def test_brats2021_files_grid_and_labels(brats_cohort):
    cases = sorted(p for p in Path(brats_cohort).iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [c.name for c in cases] == [f"BraTS-SYN-{i:05d}" for i in range(len(cases))]
    for case in cases:
        names = sorted(p.name for p in case.iterdir())
        assert names == sorted(f"{case.name}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg"))
        assert {modality_from_filename(n) for n in names if not is_segmentation_file(n)} == {"t1", "t1c", "t2", "flair"}
        seg = nib.load(case / f"{case.name}_seg.nii.gz")
        assert seg.get_data_dtype() == np.uint8
        assert seg.shape == SHAPE_2MM
        np.testing.assert_allclose(seg.affine, AFFINE_2MM)
        labels = set(np.unique(np.asarray(seg.dataobj)).tolist())
        assert {0, 2, 4} <= labels <= {0, 1, 2, 4}
        t1 = nib.load(case / f"{case.name}_t1.nii.gz")
        assert t1.get_data_dtype() == np.float32
        np.testing.assert_allclose(t1.affine, AFFINE_2MM)
        data = np.asarray(t1.dataobj)
        assert data.min() >= 0 and data.max() > 0
        assert np.all(data[np.asarray(seg.dataobj) > 0] > 0), "tumour voxels lie outside the imaged brain"


def test_written_files_match_synthesis_and_orientation(brats_cohort):
    subject = synthesise_subject("brats", 0, seed=0, spacing=2.0)
    case = Path(brats_cohort) / subject["case"]
    image = nib.load(case / f"{subject['case']}_t1ce.nii.gz")
    np.testing.assert_array_equal(np.asarray(image.dataobj), subject["images"]["t1c"])
    np.testing.assert_array_equal(
        np.asarray(nib.load(case / f"{subject['case']}_seg.nii.gz").dataobj), subject["label"]
    )
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    # anatomy the right way up: the lowest part of the brain (cerebellum) lies posterior to the brain's centre
    world = nib.affines.apply_affine(image.affine, np.argwhere(subject["brain_mask"]))
    lowest = world[world[:, 2] < np.percentile(world[:, 2], 5)]
    assert lowest[:, 1].mean() < world[:, 1].mean() - 20
    # and the brain is centred in the BraTS field of view
    centre = nib.affines.apply_affine(atlas_grid(1.0)[1], (np.array([240, 240, 155]) - 1) / 2)
    assert np.all(np.abs(world.mean(0) - centre) < 20)


def test_brats2023_naming_and_enhancing_label(tmp_path):
    (case,) = make_cohort(tmp_path, "brats", 1, label_convention="brats2023")
    names = sorted(p.name for p in case.iterdir())
    assert names == sorted(f"{case.name}_{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg"))
    assert {modality_from_filename(n) for n in names if not is_segmentation_file(n)} == {"t1", "t1c", "t2", "flair"}
    seg = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
    assert 3 in seg and 4 not in seg
    assert label_values("brats2023")["enhancing"] == 3 and label_values("brats2021")["enhancing"] == 4


def test_tissue_contrasts(brats_subject):
    tissues, images = brats_subject["tissues"], brats_subject["images"]
    means = {m: {t: _pure_mean(images[m], tissues[t]) for t in ("gm", "wm", "csf")} for m in images}
    assert means["t1"]["wm"] > means["t1"]["gm"] > means["t1"]["csf"]
    assert means["t1c"]["wm"] > means["t1c"]["gm"] > means["t1c"]["csf"]
    assert means["t2"]["csf"] > means["t2"]["gm"] > means["t2"]["wm"]
    assert means["flair"]["csf"] < 0.5 * min(means["flair"]["gm"], means["flair"]["wm"])
    pd = synthesise_subject("pretrain", 0, seed=0, missing_rate=0.0)
    assert _pure_mean(pd["images"]["pd"], pd["tissues"]["gm"]) > _pure_mean(pd["images"]["pd"], pd["tissues"]["wm"])
    # background outside the brain is exactly zero, the brain is not
    for image in images.values():
        assert np.all(image[~brats_subject["brain_mask"]] == 0)
        assert np.median(image[brats_subject["brain_mask"]]) > 0


def test_tumour_region_contrasts(brats_subject):
    images, label, tissues = brats_subject["images"], brats_subject["label"], brats_subject["tissues"]
    values = label_values("brats2021")
    region = {name: label == value for name, value in values.items()}
    assert all(mask.sum() > 5 for mask in region.values()), {k: int(v.sum()) for k, v in region.items()}
    wm = {m: _pure_mean(images[m], tissues["wm"]) for m in images}

    def relative(modality: str, name: str) -> float:
        return float(images[modality][region[name]].mean()) / wm[modality]

    assert relative("t2", "oedema") > 1.5
    assert relative("flair", "oedema") > 1.2
    assert relative("t1c", "enhancing") > 1.3 * relative("t1", "enhancing")
    assert relative("t1c", "enhancing") > 1.2
    assert relative("t1", "necrosis") < 0.8
    # nesting: necrosis is enclosed by the enhancing rim (no necrotic voxel touches oedema or healthy tissue)
    from scipy import ndimage as ndi

    touching = ndi.binary_dilation(region["necrosis"]) & ~(region["necrosis"] | region["enhancing"])
    assert touching.sum() <= 0.05 * region["necrosis"].sum()


def test_pretrain_missing_modalities(pretrain_cohort):
    designs = [subject_design("pretrain", i, seed=0, missing_rate=0.4) for i in range(60)]
    counts = [len(d["modalities"]) for d in designs]
    assert min(counts) >= 1
    assert any(c < len(COHORT_MODALITIES) for c in counts)
    assert 0.25 < 1 - np.mean(counts) / len(COHORT_MODALITIES) < 0.55
    assert any("pd" in d["modalities"] for d in designs)
    assert any(d["has_tumour"] for d in designs) and not all(d["has_tumour"] for d in designs)
    # the fixture folder holds exactly the designed modalities and no segmentation
    for i, case in enumerate(sorted(p for p in Path(pretrain_cohort).iterdir() if p.is_dir())):
        assert case.name == f"PRETRAIN-SYN-{i:05d}"
        files = sorted(case.iterdir())
        assert not any(is_segmentation_file(f) for f in files)
        assert sorted(modality_from_filename(f) for f in files) == sorted(designs[i]["modalities"])


def test_adni_labels_csv(adni_cohort):
    with open(Path(adni_cohort) / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "label", "diagnosis", "severity"]
    assert {r["label"] for r in rows} == {"0", "1"}
    for r in rows:
        assert {"0": "CN", "1": "AD"}[r["label"]] == r["diagnosis"]
        assert (Path(adni_cohort) / r["case"] / f"{r['case']}_t1.nii.gz").is_file()
        assert sorted(p.name for p in (Path(adni_cohort) / r["case"]).iterdir()) == [f"{r['case']}_t1.nii.gz"]
    severity = {r["label"]: [] for r in rows}
    for r in rows:
        severity[r["label"]].append(float(r["severity"]))
    assert max(severity["0"]) < min(severity["1"])


def test_adni_atrophy_learnable_but_not_by_brain_volume():
    subjects = [synthesise_subject("adni", i, seed=0, spacing=2.0) for i in range(12)]
    labels = np.array([s["class_label"] for s in subjects])
    brain = np.array([float((s["tissues"]["gm"] + s["tissues"]["wm"]).sum()) for s in subjects])
    csf_ratio = np.array([float(s["tissues"]["csf"].sum()) for s in subjects]) / brain
    volume_accuracy = _best_threshold_accuracy(brain, labels)
    ratio_accuracy = _best_threshold_accuracy(csf_ratio, labels)
    assert volume_accuracy <= 0.8, volume_accuracy
    assert ratio_accuracy >= 0.9 and ratio_accuracy > volume_accuracy, (ratio_accuracy, volume_accuracy)
    # the atrophy is visible in the image itself: the CSF-dark part of the brain grows with the diagnosis
    dark = []
    for s in subjects:
        t1, mask = s["images"]["t1"], s["brain_mask"]
        threshold = 0.5 * (_pure_mean(t1, s["tissues"]["csf"], 0.8) + _pure_mean(t1, s["tissues"]["gm"]))
        dark.append(float(np.mean(t1[mask] < threshold)))
    assert np.mean(np.array(dark)[labels == 1]) > np.mean(np.array(dark)[labels == 0])


def test_preview_png(tmp_path):
    import matplotlib.image

    (case,) = make_cohort(tmp_path, "brats", 1, preview=True)
    png = tmp_path / PREVIEW_DIR_NAME / f"{case.name}.png"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not blank
    assert not any(p.name.endswith(".tmp") or p.name.startswith(".") for p in png.parent.iterdir())


def test_visualisation_helpers(tmp_path, brats_subject):
    from brainmvp_components.visualize.previews import (
        save_overlay,
        save_reconstruction_preview,
        save_template_montage,
    )

    t1 = brats_subject["images"]["t1"]
    assert save_overlay(t1, brats_subject["label"], tmp_path / "o.png", title="overlay").is_file()
    templates = {m: brats_subject["images"][m] - brats_subject["images"][m].mean() for m in ("t1", "t2")}
    assert save_template_montage(templates, tmp_path / "t.png").is_file()
    x = t1[None] / t1.max()
    assert save_reconstruction_preview({"input": x, "target": x[0]}, tmp_path / "r.png").is_file()
    with pytest.raises(ValueError, match="3-D"):
        save_overlay(t1[..., 0], brats_subject["label"][..., 0], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="shape"):
        save_overlay(t1, brats_subject["label"][:-1], tmp_path / "bad.png")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        make_cohort(tmp_path, "brast", 1)
    with pytest.raises(ValueError, match="subjects"):
        make_cohort(tmp_path, "brats", 0)
    with pytest.raises(ValueError, match="missing_rate"):
        make_cohort(tmp_path, "pretrain", 1, missing_rate=1.0)
    with pytest.raises(ValueError, match="label convention"):
        make_cohort(tmp_path, "brats", 1, label_convention="brats2019")
    with pytest.raises(ValueError, match="index"):
        synthesise_subject("brats", -1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        make_cohort(tmp_path / "file", "brats", 1)
