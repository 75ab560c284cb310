"""Loading modalities into channels and BraTS label conversions, on the generated cohort."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainmvp_components.data.modalities import CANONICAL_MODALITIES, modality_from_filename
from brainmvp_components.transforms.io import CaseLoadError, LoadModalitiesd
from brainmvp_components.transforms.labels import (
    BratsLabelToRegions,
    BratsLabelToRegionsd,
    RegionsToBratsLabel,
    RegionsToBratsLabeld,
)


def _case(cohort: Path):
    case_dir = sorted(p for p in cohort.iterdir() if p.is_dir() and list(p.glob("*_seg.nii.gz")))[0]
    images = sorted(p for p in case_dir.glob("*.nii.gz") if modality_from_filename(p))
    label = next(case_dir.glob("*_seg.nii.gz"))
    return case_dir.name, images, [modality_from_filename(p) for p in images], label


def test_load_list_keeps_canonical_names(brats_cohort):
    case, images, names, _ = _case(brats_cohort)
    raw_names = [p.name.split("_")[-1].split(".")[0] for p in images]  # t1ce etc., aliases
    out = LoadModalitiesd("image")({"case": case, "image": [str(p) for p in images], "modalities": raw_names})
    image = out["image"]
    assert image.shape[0] == len(images)
    assert out["modalities"] == names
    assert out["modality_index"].tolist() == [CANONICAL_MODALITIES.index(n) for n in names]
    ref = nib.load(images[0])
    assert tuple(image.shape[1:]) == ref.shape
    np.testing.assert_allclose(np.asarray(image.affine), ref.affine, atol=1e-4)
    for channel, path in enumerate(images):
        np.testing.assert_allclose(image[channel].numpy(), nib.load(path).get_fdata(), rtol=1e-5, atol=1e-5)


def test_load_reorders_and_marks_missing(brats_cohort):
    case, images, names, _ = _case(brats_cohort)
    wanted = ["flair", "t1c", "t2", "t1"]
    keep = [i for i, n in enumerate(names) if n != "t2"]
    data = {"case": case, "image": [str(images[i]) for i in keep], "modalities": [names[i] for i in keep]}
    out = LoadModalitiesd("image", modalities=wanted, allow_missing=True)(data)
    assert out["modalities"] == wanted
    assert out["missing_modalities"] == ["t2"]
    assert torch.all(out["image"][2] == 0)
    flair = nib.load(images[names.index("flair")]).get_fdata()
    np.testing.assert_allclose(out["image"][0].numpy(), flair, rtol=1e-5, atol=1e-5)
    with pytest.raises(CaseLoadError, match=rf"case '{case}': modalities \['t2'\] are required"):
        LoadModalitiesd("image", modalities=wanted)(data)


def test_load_4d_file(brats_cohort, tmp_path):
    case, images, names, _ = _case(brats_cohort)
    ref = nib.load(images[0])
    stacked = np.stack([nib.load(p).get_fdata(dtype=np.float32) for p in images], axis=-1)
    path = tmp_path / "case_4d.nii.gz"
    nib.save(nib.Nifti1Image(stacked, ref.affine), path)
    out = LoadModalitiesd("image", default_modalities=names)({"image": str(path)})
    assert out["image"].shape == (len(names), *ref.shape)
    np.testing.assert_allclose(out["image"][1].numpy(), stacked[..., 1], rtol=1e-5)
    with pytest.raises(CaseLoadError, match=r"holds 4 volume\(s\) .* but 2 modalities are named"):
        LoadModalitiesd("image")({"image": str(path), "modalities": names[:2]})


def test_load_errors_name_the_file(brats_cohort, tmp_path):
    case, images, names, _ = _case(brats_cohort)
    ref = nib.load(images[0])
    shifted = tmp_path / "shifted_t2.nii.gz"
    affine = ref.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(ref.get_fdata(dtype=np.float32), affine), shifted)
    with pytest.raises(CaseLoadError, match="shifted_t2.nii.gz: not on the case's grid"):
        LoadModalitiesd("image")({"case": case, "image": [str(images[0]), str(shifted)], "modalities": ["t1", "t2"]})
    broken = tmp_path / "broken_t1.nii.gz"
    broken.write_bytes(images[0].read_bytes()[:200])
    with pytest.raises(CaseLoadError, match="broken_t1.nii.gz: unreadable or corrupt"):
        LoadModalitiesd("image")({"case": case, "image": [str(broken)], "modalities": ["t1"]})


@pytest.mark.parametrize("convention, et", [("brats2021", 4), ("brats2023", 3)])
def test_label_round_trip(brats_cohort, convention, et):
    *_, label_path = _case(brats_cohort)
    label = nib.load(label_path).get_fdata().astype(np.uint8)
    assert set(np.unique(label)) <= {0, 1, 2, 4} and (label == 4).any()
    label = np.where(label == 4, et, label)[None]
    regions = BratsLabelToRegions(convention)(torch.as_tensor(label))
    assert regions.shape == (3, *label.shape[1:])
    tc, wt, en = (regions[i].bool().numpy() for i in range(3))
    np.testing.assert_array_equal(en, label[0] == et)
    np.testing.assert_array_equal(tc, (label[0] == 1) | (label[0] == et))
    np.testing.assert_array_equal(wt, label[0] > 0)
    assert (tc <= wt).all() and (en <= tc).all()
    back = RegionsToBratsLabel(convention)(regions.float())
    np.testing.assert_array_equal(np.asarray(back), label)
    back_np = RegionsToBratsLabel(convention)(regions.numpy().astype(np.float32))
    assert isinstance(back_np, np.ndarray) and back_np.dtype == np.uint8
    np.testing.assert_array_equal(back_np, label)


def test_label_convention_mismatch_is_an_error():
    label = torch.zeros(1, 4, 4, 4, dtype=torch.uint8)
    label[0, 1, 1, 1] = 4
    with pytest.raises(ValueError, match=r"label values \[4\] are not in the brats2023 convention"):
        BratsLabelToRegions("brats2023")(label)
    with pytest.raises(ValueError, match="unknown BraTS label convention"):
        BratsLabelToRegions("brats2019x")


def test_dictionary_versions():
    label = torch.tensor([0, 1, 2, 4]).reshape(1, 4, 1, 1)
    d = BratsLabelToRegionsd("label")({"label": label})
    assert d["label"].shape == (3, 4, 1, 1)
    probabilities = d["label"].float() * 0.9
    out = RegionsToBratsLabeld("pred", threshold=0.5)({"pred": probabilities})
    assert out["pred"].flatten().tolist() == [0, 1, 2, 4]
    with pytest.raises(ValueError, match="expected region channels"):
        RegionsToBratsLabel()(torch.zeros(2, 4, 4, 4))
