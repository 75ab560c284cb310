"""Tests for the training data sets' caching modes (brainmvp_components.data.datasets)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, Dataset, MetaTensor
from monai.transforms import Compose, EnsureTyped, Lambdad, LoadImaged, MapTransform, RandSpatialCropd, Spacingd

from brainmvp_components.data.datasets import AtomicPersistentDataset, training_dataset, transforms_hash


class CountCalls(MapTransform):
    """Identity that counts how often the deterministic pre-processing ran."""

    def __init__(self, keys):
        super().__init__(keys)
        self.calls = 0

    def __call__(self, data):
        self.calls += 1
        return dict(data)


def _write_case(path, value: float) -> dict:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), value, np.float32), affine), path)
    return {"image": str(path)}


def _pipeline(pixdim=(2.0, 2.0, 2.0)) -> tuple[Compose, CountCalls]:
    counter = CountCalls("image")
    transform = Compose(
        [
            LoadImaged("image", ensure_channel_first=True),
            Spacingd("image", pixdim=pixdim),
            counter,
            RandSpatialCropd("image", roi_size=(4, 4, 4), random_size=False),
        ]
    )
    return transform, counter


def test_disk_cache_fills_on_first_use_and_keeps_the_affine(tmp_path):
    data = [_write_case(tmp_path / f"case{i}.nii.gz", float(i)) for i in range(3)]
    transform, counter = _pipeline()
    dataset = training_dataset(data, transform, cache="disk", cache_dir=tmp_path / "cache")
    assert isinstance(dataset, AtomicPersistentDataset)
    first = dataset[1]
    assert counter.calls == 1 and len(list((tmp_path / "cache").glob("*.pt"))) == 1  # nothing built up front
    assert isinstance(first["image"], MetaTensor) and first["image"].shape == (1, 4, 4, 4)
    assert float(first["image"].mean()) == pytest.approx(1.0)

    again_transform, again_counter = _pipeline()
    again = training_dataset(data, again_transform, cache="disk", cache_dir=tmp_path / "cache")[1]
    assert again_counter.calls == 0  # read back, not recomputed
    crop_origin = again["image"].affine[:3, 3]
    full_origin = torch.tensor([-10.0, 5.0, 3.0], dtype=crop_origin.dtype)
    offset = (crop_origin - full_origin) / 2.0  # the crop's voxel offset on the 2 mm grid
    torch.testing.assert_close(offset, offset.round())
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_disk_cache_key_follows_files_and_transform_settings(tmp_path):
    data = [_write_case(tmp_path / "case.nii.gz", 1.0)]
    cache = tmp_path / "cache"
    transform, counter = _pipeline()
    training_dataset(data, transform, cache="disk", cache_dir=cache)[0]

    _write_case(tmp_path / "case.nii.gz", 5.0)  # regenerated image, same path
    stamp = os.stat(data[0]["image"]).st_mtime_ns + 10**9
    os.utime(data[0]["image"], ns=(stamp, stamp))
    transform, counter = _pipeline()
    assert float(training_dataset(data, transform, cache="disk", cache_dir=cache)[0]["image"].mean()) == 5.0
    assert counter.calls == 1

    transform, counter = _pipeline(pixdim=(4.0, 4.0, 4.0))  # changed pre-processing
    training_dataset(data, transform, cache="disk", cache_dir=cache)[0]
    assert counter.calls == 1
    assert len(list(cache.glob("*.pt"))) == 3

    hashes = {
        transforms_hash([EnsureTyped("image", dtype=dtype), Lambdad("image", func)])
        for dtype in (torch.float32, torch.float16)
        for func in (lambda x: x > 0.1, lambda x: x > 0.2)
    }
    assert len(hashes) == 4  # dtypes and edited functions change the key


def test_fresh_and_cached_items_have_the_same_types_and_stale_partials_go(tmp_path):
    data = [_write_case(tmp_path / "case.nii.gz", 1.0)]
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, recent = cache / ".old.pt.x1.tmp", cache / ".new.pt.x2.tmp"
    stale.write_bytes(b"x")
    recent.write_bytes(b"x")
    os.utime(stale, (1, 1))
    transform, _ = _pipeline()
    fresh = training_dataset(data, transform, cache="disk", cache_dir=cache)[0]
    assert not stale.exists() and recent.exists()  # a write in progress elsewhere is left alone
    transform, _ = _pipeline()
    cached = training_dataset(data, transform, cache="disk", cache_dir=cache)[0]
    assert {k: type(v) for k, v in fresh.items()} == {k: type(v) for k, v in cached.items()}
    assert {k: type(v) for k, v in fresh["image"].meta.items()} == {k: type(v) for k, v in cached["image"].meta.items()}


def test_unreadable_cache_file_is_recomputed(tmp_path, caplog):
    data = [_write_case(tmp_path / "case.nii.gz", 2.0)]
    transform, _ = _pipeline()
    training_dataset(data, transform, cache="disk", cache_dir=tmp_path / "cache")[0]
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # a truncated write
    transform, counter = _pipeline()
    item = training_dataset(data, transform, cache="disk", cache_dir=tmp_path / "cache")[0]
    assert counter.calls == 1 and float(item["image"].mean()) == 2.0
    assert "recomputing the unreadable cache file" in caplog.text
    transform, counter = _pipeline()
    training_dataset(data, transform, cache="disk", cache_dir=tmp_path / "cache")[0]
    assert counter.calls == 0  # the rewritten file is whole


def test_other_modes_and_bad_arguments(tmp_path):
    data = [_write_case(tmp_path / "case.nii.gz", 1.0)]
    transform, counter = _pipeline()
    assert isinstance(training_dataset(data, transform, cache="memory"), CacheDataset)
    assert counter.calls == 1  # built before the first item is asked for
    plain = training_dataset(data, transform, cache="none")
    assert type(plain) is Dataset
    with pytest.raises(ValueError, match="cache must be one of"):
        training_dataset(data, transform, cache="ram")
    with pytest.raises(ValueError, match="needs a cache_dir"):
        training_dataset(data, transform, cache="disk")
