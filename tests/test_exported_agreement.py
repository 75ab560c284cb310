"""The exported-model agreement check: Dice per run against references, differences from eager, voxel agreement."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainmvp_components.benchmarks.exported_agreement import agreement_rows, label_disagreement, report


def _write(path: Path, labels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.eye(4)), str(path))
    return str(path)


def _tumour(shift: int = 0) -> np.ndarray:
    labels = np.zeros((24, 24, 24), dtype=np.uint8)
    labels[6 + shift : 18 + shift, 6:18, 6:18] = 2  # oedema
    labels[9 + shift : 15 + shift, 9:15, 9:15] = 1  # necrosis
    labels[11 + shift : 13 + shift, 11:13, 11:13] = 4  # enhancing
    return labels


def test_agreement_rows_measure_dice_and_differences_from_eager(tmp_path):
    references = {"c1": _write(tmp_path / "ref" / "c1_seg.nii.gz", _tumour())}
    _write(tmp_path / "eager" / "c1_seg.nii.gz", _tumour())
    _write(tmp_path / "same" / "c1_seg.nii.gz", _tumour())
    _write(tmp_path / "shifted" / "c1_seg.nii.gz", _tumour(shift=2))
    folders = {name: tmp_path / name for name in ("eager", "same", "shifted")}
    rows = {row["run"]: row for row in agreement_rows(folders, references)}

    assert rows["eager"]["dice_wt"] == pytest.approx(1.0)
    assert rows["same"]["diff_wt"] == 0 and rows["same"]["voxels_differing"] == 0
    # a 2-voxel shift of a 12-voxel box: WT Dice 10/12
    assert rows["shifted"]["dice_wt"] == pytest.approx(10 / 12)
    assert rows["shifted"]["diff_wt"] == pytest.approx(10 / 12 - 1)
    assert rows["shifted"]["voxels_differing"] > 0

    table = report(list(rows.values()), tolerance=0.005)
    assert "| same |" in table and table.count("| yes |") == 2 and table.count("| NO |") == 1


def test_label_disagreement_counts_voxels_and_rejects_other_grids(tmp_path):
    a = _tumour()
    b = a.copy()
    b[0, 0, :4] = 2
    _write(tmp_path / "a" / "c_seg.nii.gz", a)
    _write(tmp_path / "b" / "c_seg.nii.gz", b)
    assert label_disagreement(tmp_path / "a", tmp_path / "b", ["c"]) == pytest.approx(4 / a.size)
    _write(tmp_path / "small" / "c_seg.nii.gz", a[:20])
    with pytest.raises(ValueError, match="c: label maps differ in shape"):
        label_disagreement(tmp_path / "a", tmp_path / "small", ["c"])
