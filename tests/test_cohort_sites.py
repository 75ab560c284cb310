"""Acquisition sites of the embedded cohort: the protocol table, imaging at a site, sites in cohorts and datalists."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from brainmvp_components.data.cohort import SITES, Site, assign_sites, make_cohort, subject_design, synthesise_subject
from brainmvp_components.data.cohort.sites import apply_resolution
from brainmvp_components.data.datalist import build_datalist


def test_site_a_is_the_nominal_protocol():
    assert SITES["A"].nominal and not any(SITES[name].nominal for name in "BCD")
    nominal = synthesise_subject("pretrain", 1, seed=2)
    at_a = synthesise_subject("pretrain", 1, seed=2, site="A")
    assert at_a["site"] == "A" and "site" not in nominal
    assert nominal["images"].keys() == at_a["images"].keys()
    assert all(np.array_equal(nominal["images"][m], at_a["images"][m]) for m in nominal["images"])


def test_sites_change_the_imaging_not_the_subject():
    nominal = synthesise_subject("brats", 0, seed=1)
    thick = synthesise_subject("brats", 0, seed=1, site="B")
    # same anatomy and tumour; the superior field of view is cut (label included)
    inside = thick["brain_mask"].any(axis=(0, 1))
    assert np.array_equal(thick["label"][..., inside], nominal["label"][..., inside])
    assert not thick["brain_mask"][..., ~inside].any() and not thick["images"]["t1"][..., ~inside].any()
    assert nominal["brain_mask"][..., ~inside].any()
    # 5 mm slices: neighbouring slices differ less than in the nominal image
    step = [float(np.abs(np.diff(s["images"]["flair"][..., inside], axis=2)).mean()) for s in (nominal, thick)]
    assert step[1] < 0.8 * step[0] * thick["images"]["flair"].max() / nominal["images"]["flair"].max()


def test_resolution_keeps_a_constant_and_averages_slabs():
    constant = np.full((4, 4, 10), 3.0, dtype=np.float32)
    assert np.allclose(apply_resolution(constant, 2.0, (2.0, 2.0, 5.0)), 3.0)
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32), (2, 2, 10)).copy()
    assert np.allclose(apply_resolution(ramp, 2.0, (1.0, 1.0, 1.0)), ramp)  # finer than the grid: unchanged
    assert apply_resolution(ramp, 1.0, (1.0, 1.0, 4.0)).shape == ramp.shape


def test_site_modalities_and_assignment():
    for index in range(12):
        assert set(subject_design("pretrain", index, site="C")["modalities"]) <= set(SITES["C"].modalities)
        assert subject_design("brats", index, site="C")["modalities"] == ["t1", "t1c", "t2", "flair"]
    assert assign_sites(5, ["A", "A", "D"]) == ["A", "A", "D", "A", "A"]
    with pytest.raises(ValueError, match="unknown site"):
        assign_sites(2, ["Z"])
    with pytest.raises(ValueError, match="modalities"):
        Site("X", "no contrasts", modalities=())


def test_cohort_with_sites_records_them_in_the_datalist(tmp_path):
    make_cohort(tmp_path / "pool", "pretrain", 3, seed=0, sites=["B", "D"])
    with open(tmp_path / "pool" / "sites.csv") as f:
        assert [(r["case"], r["site"]) for r in csv.DictReader(f)] == [
            ("PRETRAIN-SYN-00000", "B"), ("PRETRAIN-SYN-00001", "D"), ("PRETRAIN-SYN-00002", "B"),
        ]  # fmt: skip
    build_datalist(tmp_path / "pool", tmp_path / "pool" / "datalist.json", val_fraction=0.0)
    document = json.loads((tmp_path / "pool" / "datalist.json").read_text())
    assert sorted(e["site"] for e in document["training"]) == ["B", "B", "D"]
