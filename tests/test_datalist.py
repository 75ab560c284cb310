"""Tests for the data set modules of brainmvp_components.data (discovery, checks, splits, datalist, inference
inputs) and scripts/prepare_datalist.py on the embedded cohorts."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainmvp_components.data.datalist import build_datalist, ensure_datalist, load_datalist
from brainmvp_components.data.discovery import discover_cases
from brainmvp_components.data.inference_inputs import inference_cases
from brainmvp_components.data.modalities import CANONICAL_MODALITIES, is_segmentation_file, modality_from_filename
from brainmvp_components.data.problems import DatasetIntegrityError
from brainmvp_components.data.splits import nested_label_fractions, split_cases

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "prepare_datalist.py"


# ---------------------------------------------------------------------------------------------- helpers


def _copy(cohort: Path, tmp_path: Path) -> Path:
    """A private copy of a session cohort (without any datalist already in it) to break or write into."""
    data = tmp_path / "data"
    shutil.copytree(cohort, data, ignore=shutil.ignore_patterns("datalist.json", ".datalist.lock"))
    return data


def _cases(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image(case_dir: Path, modality: str | None = None) -> Path:
    """The file of ``modality`` in a case folder (the first image when ``modality`` is None)."""
    for path in sorted(case_dir.iterdir()):
        found = modality_from_filename(path)
        if not is_segmentation_file(path) and found is not None and (modality is None or found == modality):
            return path
    raise AssertionError(f"no {modality} image in {case_dir}")


def _label(case_dir: Path) -> Path:
    return next(p for p in sorted(case_dir.iterdir()) if is_segmentation_file(p))


def _rewrite(path: Path, data=None, affine=None) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if data is None else data
    out = nib.Nifti1Image(np.asarray(data), img.affine if affine is None else affine)
    path.unlink()
    nib.save(out, str(path))


def _build(data: Path, **kw) -> dict:
    kw.setdefault("val_fraction", 0.2)
    return build_datalist(data, data / "datalist.json", **kw)


# ---------------------------------------------------------------------------------------------- discovery and format


def test_brats_datalist_format(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    dl = _build(data, test_fraction=0.2)
    on_disk = json.loads((data / "datalist.json").read_text())
    assert on_disk == dl
    assert dl["modalities"] == ["t1", "t1c", "t2", "flair"]
    assert dl["task"] == "segmentation" and dl["label_values"] in ([0, 1, 2, 4], [0, 1, 2, 3])
    entries = dl["training"] + dl["validation"] + dl["test"]
    assert dl["numTraining"] + dl["numValidation"] + dl["numTest"] == len(entries) == len(_cases(data))
    for entry in entries:
        assert entry["modalities"] == ["t1", "t1c", "t2", "flair"]
        assert entry["missing_modalities"] == []
        assert len(entry["image"]) == 4
        for rel, modality in zip(entry["image"], entry["modalities"]):
            assert not os.path.isabs(rel) and (data / rel).is_file()
            assert modality_from_filename(rel) == modality
        assert is_segmentation_file(entry["label"]) and (data / entry["label"]).is_file()
    assert dl["excluded"] == []


def test_paths_relative_to_json_folder(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    out = tmp_path / "elsewhere" / "nested" / "list.json"
    dl = build_datalist(data, out)
    rel = dl["training"][0]["image"][0]
    assert rel.startswith("../../data/")
    assert (out.parent / rel).resolve().is_file()


def test_splits_disjoint_and_cover(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    dl = _build(data, val_fraction=0.2, test_fraction=0.2)
    ids = {s: [e["case"] for e in dl[s]] for s in ("training", "validation", "test")}
    n = len(_cases(data))
    assert len(ids["validation"]) == len(ids["test"]) == max(1, round(0.2 * n))
    all_ids = ids["training"] + ids["validation"] + ids["test"]
    assert sorted(all_ids) == sorted(p.name for p in _cases(data))
    assert len(set(all_ids)) == len(all_ids)


def test_split_sizes_and_seeds():
    ids = [f"case_{i:03d}" for i in range(50)]
    a = split_cases(ids, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert [len(a[s]) for s in ("training", "validation", "test")] == [35, 10, 5]
    assert split_cases(list(reversed(ids)), 0.2, 0.1, seed=3) == a
    assert split_cases(ids, 0.2, 0.1, seed=4) != a
    with pytest.raises(ValueError, match="no case would be left"):
        split_cases(ids[:2], val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(ids, val_fraction=1.5)


def test_stratified_splits_and_fractions_keep_class_proportions():
    ids = [f"case_{i:03d}" for i in range(40)]
    strata = {case: int(i % 4 == 0) for i, case in enumerate(ids)}  # 10 of class 1, 30 of class 0
    for seed in range(5):
        splits = split_cases(ids, val_fraction=0.2, test_fraction=0.2, seed=seed, strata=strata)
        for name, expected in (("validation", 2), ("test", 2), ("training", 6)):
            assert sum(strata[c] for c in splits[name]) == expected, (seed, name)
        subsets = nested_label_fractions(splits["training"], (0.2, 0.5), seed=seed, strata=strata)
        assert sum(strata[c] for c in subsets["0.5"]) == 3
        assert set(subsets["0.2"]) < set(subsets["0.5"])


def test_label_fractions_nested_and_sized():
    ids = [f"c{i:02d}" for i in range(40)]
    subsets = nested_label_fractions(ids, (0.8, 0.2, 0.4, 0.6), seed=1)
    assert list(subsets) == ["0.2", "0.4", "0.6", "0.8"]
    assert [len(subsets[k]) for k in subsets] == [8, 16, 24, 32]
    keys = list(subsets)
    for small, large in zip(keys, keys[1:]):
        assert set(subsets[small]) < set(subsets[large])
    assert nested_label_fractions(ids, (0.2, 0.4), seed=1)["0.2"] == subsets["0.2"]
    assert nested_label_fractions(ids, (0.2,), seed=2)["0.2"] != subsets["0.2"]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        nested_label_fractions(ids, (0.0,))


def test_label_fractions_in_datalist_and_seed_reproducible(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    first = _build(data, seed=7, label_fractions=(0.4, 0.8))
    second = build_datalist(data, tmp_path / "again.json", seed=7, label_fractions=(0.4, 0.8))
    for split in ("training", "validation", "test"):
        assert [e["case"] for e in first[split]] == [e["case"] for e in second[split]]
    assert first["label_fractions"] == second["label_fractions"]
    training = {e["case"] for e in first["training"]}
    small, large = first["label_fractions"]["0.4"], first["label_fractions"]["0.8"]
    assert set(small) <= set(large) <= training
    assert len(small) == max(1, round(0.4 * len(training))) and len(large) == max(1, round(0.8 * len(training)))


def test_missing_modalities_listed(pretrain_cohort, tmp_path):
    data = _copy(pretrain_cohort, tmp_path)
    dl = _build(data)
    entries = dl["training"] + dl["validation"]
    assert len(entries) == len(_cases(data))
    union = dl["modalities"]
    assert union == [m for m in CANONICAL_MODALITIES if m in union]
    assert any(e["missing_modalities"] for e in entries), "the pretrain cohort should have missing modalities"
    for entry in entries:
        present = {modality_from_filename(p) for p in entry["image"]}
        assert set(entry["modalities"]) == present
        assert entry["missing_modalities"] == [m for m in union if m not in present]
        assert "label" not in entry


def test_unrecognised_file_ignored_and_duplicate_modality(brats_cohort, tmp_path, caplog):
    data = _copy(brats_cohort, tmp_path)
    case = _cases(data)[0]
    (case / "notes.txt").write_text("scanner notes")
    shutil.copy(_image(case, "t1"), case / f"{case.name}_scan.nii.gz")
    with caplog.at_level("WARNING"):
        _build(data)
    assert "notes.txt" in caplog.text and f"{case.name}_scan.nii.gz" in caplog.text
    (data / "datalist.json").unlink()
    shutil.copy(_image(case, "t1"), case / f"{case.name}_t1w.nii.gz")
    with pytest.raises(DatasetIntegrityError, match="second file for modality 't1'") as err:
        _build(data)
    assert [p.case for p in err.value.problems] == [case.name]
    assert not (data / "datalist.json").exists()


# ---------------------------------------------------------------------------------------------- integrity failures


def _nan(case: Path) -> Path:
    path = _image(case, "t2")
    img = nib.load(str(path))
    arr = np.asanyarray(img.dataobj).astype(np.float32)
    arr[1, 2, 3] = np.nan
    _rewrite(path, arr)
    return path


def _shape(case: Path) -> Path:
    path = _image(case, "flair")
    _rewrite(path, np.asanyarray(nib.load(str(path)).dataobj)[:-1])
    return path


def _affine(case: Path) -> Path:
    path = _image(case, "t1c")
    affine = nib.load(str(path)).affine.copy()
    affine[0, 3] += 0.5
    _rewrite(path, affine=affine)
    return path


def _label_value(case: Path) -> Path:
    path = _label(case)
    arr = np.asanyarray(nib.load(str(path)).dataobj).astype(np.uint8)
    arr[0, 0, 0] = 7
    _rewrite(path, arr)
    return path


def _truncated(case: Path) -> Path:
    path = _image(case, "t1")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _not_gzip(case: Path) -> Path:
    path = _image(case, "t1")
    path.write_bytes(b"this is not a NIfTI file at all" * 20)
    return path


def _two_d(case: Path) -> Path:
    path = _image(case, "t2")
    _rewrite(path, np.asanyarray(nib.load(str(path)).dataobj)[:, :, 5])
    return path


def _real_4d(case: Path) -> Path:
    path = _image(case, "t2")
    arr = np.asanyarray(nib.load(str(path)).dataobj)
    _rewrite(path, np.stack([arr, arr], axis=-1))
    return path


def _constant(case: Path) -> Path:
    path = _image(case, "flair")
    _rewrite(path, np.full(nib.load(str(path)).shape, 3.0, dtype=np.float32))
    return path


def _label_grid(case: Path) -> Path:
    path = _label(case)
    arr = np.asanyarray(nib.load(str(path)).dataobj)
    _rewrite(path, np.pad(arr, ((0, 2), (0, 0), (0, 0))))
    return path


def _label_mixed(case: Path) -> Path:
    path = _label(case)
    arr = np.asanyarray(nib.load(str(path)).dataobj).astype(np.uint8)
    arr[0, 0, 0], arr[0, 0, 1] = 3, 4
    _rewrite(path, arr)
    return path


def _empty(case: Path) -> Path:
    for path in case.iterdir():
        path.unlink()
    return case


BREAKERS = {
    "nan": (_nan, "non-finite"),
    "shape": (_shape, "shape"),
    "affine": (_affine, "affine differs"),
    "label_value": (_label_value, "fit no BraTS convention"),
    "label_mixed": (_label_mixed, "mix the BraTS 2021"),
    "truncated_gzip": (_truncated, "unreadable or corrupt"),
    "not_nifti": (_not_gzip, "unreadable or corrupt"),
    "two_d": (_two_d, "expected a 3-D volume"),
    "real_4d": (_real_4d, "expected a 3-D volume"),
    "constant": (_constant, "constant image"),
    "label_grid": (_label_grid, "segmentation not on the image grid"),
    "empty_case": (_empty, "holds no image"),
}


@pytest.mark.parametrize("name", list(BREAKERS))
def test_integrity_failure(brats_cohort, tmp_path, name):
    data = _copy(brats_cohort, tmp_path)
    case = _cases(data)[1]
    breaker, message = BREAKERS[name]
    broken = breaker(case)
    with pytest.raises(DatasetIntegrityError) as err:
        _build(data)
    problems = err.value.problems
    assert [p.case for p in problems] == [case.name], problems
    assert message in problems[0].message
    assert Path(problems[0].file) == broken
    assert case.name in str(err.value) and broken.name in str(err.value)
    assert not (data / "datalist.json").exists()
    assert not [p for p in data.iterdir() if p.name.startswith(".datalist.json")], "temporary file left behind"


def test_skip_bad_excludes_and_lists(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    bad_nan, bad_empty = _cases(data)[0], _cases(data)[2]
    _nan(bad_nan)
    _empty(bad_empty)
    dl = _build(data, skip_bad=True, test_fraction=0.2)
    kept = [e["case"] for s in ("training", "validation", "test") for e in dl[s]]
    assert sorted(kept) == sorted(p.name for p in _cases(data) if p not in (bad_nan, bad_empty))
    excluded = {e["case"]: e["problems"] for e in dl["excluded"]}
    assert set(excluded) == {bad_nan.name, bad_empty.name}
    assert "non-finite" in excluded[bad_nan.name][0]["message"]
    assert not os.path.isabs(excluded[bad_nan.name][0]["file"])
    assert all(c in kept for subset in dl["label_fractions"].values() for c in subset)


def test_label_conventions(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    cases = _cases(data)
    dl = _build(data)
    convention = dl["label_values"]
    other = 3 if 4 in convention else 4
    path = _label(cases[0])
    arr = np.asanyarray(nib.load(str(path)).dataobj).astype(np.uint8)
    arr[arr == convention[-1]] = 0
    arr[0, 0, 0] = other
    _rewrite(path, arr)
    (data / "datalist.json").unlink()
    # One case in the other BraTS convention while the rest use the first: a mix across the data set.
    with pytest.raises(DatasetIntegrityError, match="convention") as err:
        _build(data)
    assert [p.case for p in err.value.problems] == [cases[0].name]
    # Declared values override the BraTS conventions.
    dl = _build(data, label_values=(0, 1, 2, 3, 4))
    assert dl["label_values"] == [0, 1, 2, 3, 4] and not dl["excluded"]
    (data / "datalist.json").unlink()
    with pytest.raises(DatasetIntegrityError, match=r"outside the declared set \[0, 1, 2\]"):
        _build(data, label_values=(0, 1, 2))


def test_singleton_4d_accepted(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    path = _image(_cases(data)[0], "t1")
    _rewrite(path, np.asanyarray(nib.load(str(path)).dataobj)[..., None])
    assert nib.load(str(path)).ndim == 4
    dl = _build(data)
    assert not dl["excluded"]


def test_no_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetIntegrityError, match="no case folders"):
        build_datalist(tmp_path / "empty", tmp_path / "empty" / "datalist.json", skip_bad=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_cases(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------- classification


def test_adni_labels_from_csv(adni_cohort, tmp_path):
    data = _copy(adni_cohort, tmp_path)
    dl = _build(data, val_fraction=0.25)
    rows = [line.split(",") for line in (data / "labels.csv").read_text().splitlines()[1:] if line]
    expected = {r[0]: int(r[1]) for r in rows}
    entries = dl["training"] + dl["validation"]
    assert {e["case"]: e["label"] for e in entries} == expected
    assert all(type(e["label"]) is int for e in entries)
    assert dl["task"] == "classification"
    assert dl["num_classes"] == len(dl["classes"]) == max(expected.values()) + 1
    names = {int(r[1]): r[2] for r in rows}
    assert dl["classes"] == [names[i] for i in range(len(names))]


def test_adni_csv_problems(adni_cohort, tmp_path):
    data = _copy(adni_cohort, tmp_path)
    lines = (data / "labels.csv").read_text().splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line]
    missing_case = rows[0].split(",")[0]
    bad = rows[1].split(",")
    bad[1] = "AD"
    (data / "labels.csv").write_text("\n".join([header, ",".join(bad), *rows[2:]]) + "\n")
    with pytest.raises(DatasetIntegrityError) as err:
        _build(data)
    messages = {p.case: p.message for p in err.value.problems}
    assert "no row in the labels file" in messages[missing_case]
    assert "not an integer" in messages[bad[0]]
    # An explicit labels file replaces the automatic one.
    custom = tmp_path / "custom.csv"
    custom.write_text("case,label\n" + "".join(f"{c.name},{i % 2}\n" for i, c in enumerate(_cases(data))))
    dl = _build(data, labels_csv=custom)
    assert dl["num_classes"] == 2 and "classes" not in dl
    assert {e["case"]: e["label"] for e in dl["training"] + dl["validation"]}[_cases(data)[1].name] == 1


# ---------------------------------------------------------------------------------------------- load_datalist


def test_load_datalist(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    _build(data, label_fractions=(0.2, 0.6))
    path = data / "datalist.json"
    training = load_datalist(path)
    assert len(training) == json.loads(path.read_text())["numTraining"]
    for entry in training:
        assert all(os.path.isabs(p) and Path(p).is_file() for p in entry["image"])
        assert os.path.isabs(entry["label"]) and Path(entry["label"]).is_file()
    subset = load_datalist(path, label_fraction=0.6)
    assert {e["case"] for e in subset} == set(json.loads(path.read_text())["label_fractions"]["0.6"])
    assert {e["case"] for e in load_datalist(path, label_fraction=0.2)} <= {e["case"] for e in subset}
    assert load_datalist(path, label_fraction=1.0) == training
    assert load_datalist(path, "validation")
    with pytest.raises(ValueError, match=r"no label fraction 0.5; available: \[0.2, 0.6, 1.0\]"):
        load_datalist(path, label_fraction=0.5)
    with pytest.raises(ValueError, match="no split 'train'"):
        load_datalist(path, "train")
    with pytest.raises(FileNotFoundError):
        load_datalist(data / "missing.json")


# ---------------------------------------------------------------------------------------------- inference cases


def test_inference_cases_from_datalist_and_folder(tmp_path):
    folder = tmp_path / "data"
    for case in ("A", "B"):
        (folder / case).mkdir(parents=True)
        for modality in ("t1", "flair"):
            (folder / case / f"{case}_{modality}.nii.gz").write_bytes(b"")
    (tmp_path / "multi.nii.gz").write_bytes(b"")
    listing = tmp_path / "list.json"

    def cases(entries, *args):
        listing.write_text(json.dumps(entries))
        return inference_cases(listing, *args)

    # a single path stays a string (one, possibly 4-D, file); names from the file name or the bundle's order
    first = cases([{"image": "data/A/A_t1.nii.gz"}, {"image": "multi.nii.gz"}])
    assert first[0] == {"case": "A", "image": str(folder / "A" / "A_t1.nii.gz"), "modalities": ["t1"]}
    assert first[1] == {"case": "multi", "image": str(tmp_path / "multi.nii.gz")}
    # a list stays a list of per-modality files
    listed = cases([{"image": ["data/B/B_t1.nii.gz", "data/B/B_flair.nii.gz"]}])[0]
    assert listed["case"] == "B" and listed["modalities"] == ["t1", "flair"]
    assert listed["image"] == [str(folder / "B" / f"B_{m}.nii.gz") for m in ("t1", "flair")]
    # objects: a 'testing' list, or a decathlon-style split read with load_datalist
    listing.write_text(json.dumps({"testing": [{"case": "x", "image": ["data/B/B_t1.nii.gz"], "modalities": ["T1"]}]}))
    assert inference_cases(listing)[0]["case"] == "x"
    split = {"test": [{"case": "y", "image": "data/A/A_flair.nii.gz", "modalities": ["flair"]}], "training": []}
    listing.write_text(json.dumps(split))
    assert inference_cases(listing, None, "test")[0]["image"] == str(folder / "A" / "A_flair.nii.gz")
    with pytest.raises(ValueError, match="without a 'validation' or 'testing' list"):
        inference_cases(listing, None, "validation")
    # errors name the file and the entry
    for entries, error, match in [
        ([{"image": "data/A/A_t1.nii.gz"}, {"path": "x"}], ValueError, "entry 1: expected an object"),
        ([{"image": "data/A/absent_t1.nii.gz"}], DatasetIntegrityError, "entry 0: image file .*absent_t1"),
        ([{"image": ["data/A/A_t1.nii.gz", "multi.nii.gz"]}], ValueError, "entry 0: no 'modalities'.*multi"),
        ([{"case": "c", "image": ["data/A/A_t1.nii.gz"], "modalities": ["t1", "t2"]}], ValueError, "'c'.*1 image"),
        ([{"image": "data/A/A_t1.nii.gz", "modalities": ["x-ray"]}], ValueError, "entry 0.*bad 'modalities'"),
        ([], ValueError, "holds no entries"),
    ]:
        with pytest.raises(error, match=match):
            cases(entries)
    assert str(listing) in str(pytest.raises(ValueError, cases, [{"path": "x"}]).value)

    found = inference_cases(None, folder)
    assert [c["case"] for c in found] == ["A", "B"] and found[1]["modalities"] == ["t1", "flair"]
    with pytest.raises(FileNotFoundError, match="absent"):
        inference_cases(None, tmp_path / "absent")
    (folder / "C").mkdir()
    with pytest.raises(DatasetIntegrityError, match="holds no image file"):
        inference_cases(None, folder)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli(brats_cohort, tmp_path):
    data = _copy(brats_cohort, tmp_path)
    out = tmp_path / "out" / "datalist.json"
    _nan(_cases(data)[0])
    command = [sys.executable, str(SCRIPT), "--data-dir", str(data), "--out", str(out), "--seed", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    failed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 1, failed.stderr
    assert "non-finite" in failed.stderr and _cases(data)[0].name in failed.stderr
    assert not out.exists()
    done = subprocess.run(
        [*command, "--skip-bad", "--label-fractions", "0.5", "--test-fraction", "0.2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    dl = json.loads(out.read_text())
    assert list(dl["label_fractions"]) == ["0.5"] and dl["seed"] == 2
    assert [e["case"] for e in dl["excluded"]] == [_cases(data)[0].name]


def test_cli_bad_arguments(tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("prepare_datalist", SCRIPT)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "x.json")]) == 2
    with pytest.raises(SystemExit):
        module.main(["--data-dir", str(tmp_path), "--out", "x.json", "--label-values", "a,b"])


# ---------------------------------------------------------------------------------------------- ensure_datalist


def test_ensure_datalist_generates_and_is_idempotent(tmp_path):
    dataset_dir = tmp_path / "adni"
    path = ensure_datalist(dataset_dir, "adni", subjects=4, seed=0, spacing=4.0)
    assert path == str(dataset_dir / "datalist.json")
    dl = json.loads(Path(path).read_text())
    assert dl["numTraining"] + dl["numValidation"] == 4
    assert all(type(e["label"]) is int for e in dl["training"] + dl["validation"])
    cases_before = sorted(p.name for p in _cases(dataset_dir))
    mtime = os.stat(path).st_mtime_ns
    assert ensure_datalist(dataset_dir, "adni", subjects=4, seed=0, spacing=4.0) == path
    assert os.stat(path).st_mtime_ns == mtime
    assert sorted(p.name for p in _cases(dataset_dir)) == cases_before


def _ensure_worker(args):
    dataset_dir, kind = args
    return ensure_datalist(dataset_dir, kind, subjects=6)


def test_ensure_datalist_concurrent(brats_cohort, tmp_path, monkeypatch):
    """Ranks of one job call ensure_datalist at once on a cohort without a datalist: one builds, all get it."""
    import time

    import brainmvp_components.data.datalist as datalist_module

    data = _copy(brats_cohort, tmp_path)
    calls = tmp_path / "build_calls.txt"
    real_build = datalist_module.build_datalist

    def slow_build(*args, **kwargs):
        with open(calls, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # widen the window in which an unguarded second process would start building too
        return real_build(*args, **kwargs)

    monkeypatch.setattr(datalist_module, "build_datalist", slow_build)
    with multiprocessing.get_context("fork").Pool(3) as pool:
        paths = pool.map(_ensure_worker, [(str(data), "brats")] * 3, chunksize=1)
    assert paths == [str(data / "datalist.json")] * 3
    assert len(calls.read_text().split()) == 1, "more than one process built the datalist"
    dl = json.loads((data / "datalist.json").read_text())
    assert dl["numTraining"] + dl["numValidation"] == len(_cases(data))
    assert not [p for p in data.iterdir() if p.name.endswith(".tmp")]


def test_truncated_gzip_is_really_truncated(brats_cohort, tmp_path):
    """Guard for the breaker: the truncated file still starts as gzip but cannot be decompressed in full."""
    data = _copy(brats_cohort, tmp_path)
    path = _truncated(_cases(data)[0])
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    with pytest.raises((EOFError, OSError)), gzip.open(path) as f:
        f.read()


def test_brats2023_naming_and_convention(tmp_path):
    from brainmvp_components.data.cohort import make_cohort

    data = tmp_path / "brats2023"
    make_cohort(data, "brats", 3, seed=1, spacing=4.0, label_convention="brats2023")
    assert any("-t2f" in p.name or "_t2f" in p.name for p in _cases(data)[0].iterdir())
    dl = build_datalist(data, data / "datalist.json", val_fraction=0.0)
    assert dl["modalities"] == ["t1", "t1c", "t2", "flair"]
    assert dl["label_convention"] == "brats2023" and dl["label_values"] == [0, 1, 2, 3]
    assert all("label" in e and e["missing_modalities"] == [] for e in dl["training"])
