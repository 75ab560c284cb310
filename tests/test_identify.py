"""Modality identification of hospital series: vendor descriptions, parameters, overrides and assignment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brainmvp_components.data.identify import (
    DESCRIPTION_RULES,
    IdentificationError,
    assign_modalities,
    identify_series,
    load_modality_map,
    modality_from_parameters,
)
from brainmvp_components.data.modalities import CANONICAL_MODALITIES
from brainmvp_components.data.series import HEADER_FIELDS, ScanSeries


def dicom(description: str | None, number: int = 1, **fields) -> ScanSeries:
    header = dict.fromkeys(HEADER_FIELDS)
    header.update(SeriesDescription=description, SeriesNumber=number, Modality="MR", **fields)
    name = f"{description or 'S'} (series {number})"
    return ScanSeries(name, "dicom", Path("/case") / f"S{number}", np.zeros((4, 4, 4), np.float32), np.eye(4), header)


def nifti(file_name: str, description: str | None = None) -> ScanSeries:
    header = {} if description is None else {"description": description}
    return ScanSeries(file_name, "nifti", Path("/case") / file_name, np.zeros((4, 4, 4), np.float32), np.eye(4), header)


VENDOR_DESCRIPTIONS = {
    "AX T2 FLAIR": "flair",  # GE
    "t2_tirm_tra_dark-fluid": "flair",  # Siemens
    "t2_spc_da-fl_sag_p2_iso": "flair",  # Siemens SPACE dark fluid
    "Sag CUBE FLAIR": "flair",
    "T2 FLAIR POST": "flair",
    "T1 MPRAGE POST GD": "t1c",
    "Ax T1 SE +C": "t1c",
    "T1W_3D_TFE+C": "t1c",  # Philips
    "t1_mprage_tra_KM": "t1c",
    "Ax 3D T1 BRAVO +C": "t1c",
    "AX POST GD": "t1c",
    "t1ce": "t1c",
    "sag 3D T1 BRAVO": "t1",
    "t1_mprage_sag_p2_iso": "t1",
    "AX T1 FLAIR": "t1",  # GE's T1-weighted FLAIR
    "AX T1 PRE GD": "t1",
    "AX FSPGR 3D": "t1",
    "AX T2 FSE": "t2",
    "T2W_TSE": "t2",
    "COR T2 STIR": "t2",
    "DWI b1000": "dwi",
    "ep2d_diff_mddw_20": "dwi",
    "ADC": "adc",
    "ep2d_diff_ADC": "adc",
    "TOF_3D_multi-slab": "mra",
    "PD/T2 FSE": "pd",
    "SWI_Images": None,
    "AX T2*": None,
    "t2_fl2d_tra_hemo": None,
    "ep2d_perf": None,
    "AAHead_Scout": None,
}


@pytest.mark.parametrize("description, modality", VENDOR_DESCRIPTIONS.items(), ids=list(VENDOR_DESCRIPTIONS))
def test_vendor_descriptions(description, modality):
    found = identify_series(dicom(description))
    assert found.modality == modality, found.evidence
    assert found.evidence.startswith(f"SeriesDescription {description!r} matches ")


def test_evidence_strings():
    assert identify_series(dicom("AX T2 FLAIR")).evidence == "SeriesDescription 'AX T2 FLAIR' matches flair"
    assert identify_series(dicom("SWI_Images")).evidence == (
        "SeriesDescription 'SWI_Images' matches swi (not a modality of the registry)"
    )
    found = identify_series(dicom("AX T1 SE", ContrastBolusAgent="Gadovist"))
    assert (found.modality, found.evidence) == (
        "t1c",
        "SeriesDescription 'AX T1 SE' matches t1; ContrastBolusAgent 'Gadovist' makes it t1c",
    )
    assert identify_series(dicom("AX T1 PRE", ContrastBolusAgent="Gadovist")).modality == "t1"
    assert identify_series(dicom("AX T1 SE", ContrastBolusAgent="NONE")).modality == "t1"


def test_protocol_name_when_description_says_nothing():
    found = identify_series(dicom("Series 7", ProtocolName="t2_tse_tra"))
    assert (found.modality, found.evidence) == ("t2", "ProtocolName 't2_tse_tra' matches t2")


def test_nifti_file_name_then_description_rules():
    assert identify_series(nifti("BraTS2021_00000_t1ce.nii.gz")).evidence == (
        "file name 'BraTS2021_00000_t1ce.nii.gz' names t1c"
    )
    found = identify_series(nifti("3_t2_tirm_tra_dark-fluid.nii.gz"))
    assert (found.modality, found.evidence) == ("flair", "file name '3_t2_tirm_tra_dark-fluid.nii.gz' matches flair")
    found = identify_series(nifti("series_0004.nii.gz", description="T1 MPRAGE POST GD"))
    assert (found.modality, found.evidence) == ("t1c", "NIfTI description 'T1 MPRAGE POST GD' matches t1c")


@pytest.mark.parametrize(
    "fields, modality, evidence",
    [
        (
            {"RepetitionTime": 9000, "EchoTime": 120, "InversionTime": 2500},
            "flair",
            "TI 2500 ms > 1500 and TE 120 ms > 70: flair",
        ),
        ({"RepetitionTime": 4000, "EchoTime": 100}, "t2", "TR 4000 ms > 2000 and TE 100 ms > 70: t2"),
        ({"RepetitionTime": 500, "EchoTime": 12}, "t1", "TR 500 ms < 1200 and TE 12 ms < 30: t1"),
        (
            {"RepetitionTime": 500, "EchoTime": 12, "ContrastBolusAgent": "Dotarem"},
            "t1c",
            "TR 500 ms < 1200 and TE 12 ms < 30: t1, and ContrastBolusAgent 'Dotarem' makes it t1c",
        ),
        (
            {"RepetitionTime": 2300, "EchoTime": 2.98, "InversionTime": 900},
            "t1",
            "TE 2.98 ms < 10 and TI 900 ms in 300-1300 (inversion-prepared gradient echo): t1",
        ),
    ],
    ids=["flair", "t2", "t1", "t1c", "mprage"],
)
def test_parameters_only(fields, modality, evidence):
    found = identify_series(dicom("Series 5", **fields))
    assert found.modality == modality
    assert found.evidence == f"no rule matches SeriesDescription 'Series 5'; {evidence}"


def test_nothing_identifies_and_echo_planar_is_not_judged_by_parameters():
    found = identify_series(dicom("Series 9", RepetitionTime=1500, EchoTime=40))
    assert found.modality is None
    assert found.evidence == (
        "no rule matches SeriesDescription 'Series 9', and the sequence parameters (TR 1500, TE 40, TI absent) fit none"
    )
    assert modality_from_parameters({"RepetitionTime": 5000, "EchoTime": 90, "ScanningSequence": ["EP"]}) is None
    assert identify_series(dicom("Series 8", ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"])).modality == "adc"


def test_overrides_by_name_description_and_regex():
    series = dicom("Ax T1 SE +C", number=4)
    found = identify_series(series, {"Ax T1 SE +C (series 4)": "t1"})
    assert (found.modality, found.evidence) == ("t1", "override 'Ax T1 SE +C (series 4)' (series name) -> t1")
    assert identify_series(series, {"Ax T1 SE +C": "T1Gd"}).evidence == (
        "override 'Ax T1 SE +C' (SeriesDescription) -> t1c"
    )
    found = identify_series(dicom("MPR COR"), {r"mpr\b.*": "ignore", ".*cor.*": "t1"})
    assert (found.modality, found.evidence) == (
        None,
        "override regex 'mpr\\\\b.*' matches series name 'MPR COR (series 1)' -> None",
    )
    assert identify_series(nifti("scan_a.nii.gz"), {"scan_a.nii.gz": "flair"}).modality == "flair"
    found = identify_series(dicom("3D FLAIR SAG"), {"*flair*": "t2"})
    assert found.evidence == "override pattern '*flair*' matches series name '3D FLAIR SAG (series 1)' -> t2"
    with pytest.raises(IdentificationError, match=r"^override 'x': unknown modality 't3'"):
        identify_series(dicom("x"), {"x": "t3"})


def test_assign_modalities_and_the_duplicate_error():
    study = [dicom("AX T2 FLAIR", 2), dicom("sag 3D T1 BRAVO", 3), dicom("Ax T1 SE +C", 7), dicom("AX T2 FSE", 4)]
    study += [dicom("DWI b1000", 5), dicom("ADC", 6), dicom("Series 99")]
    assigned, unassigned = assign_modalities(study)
    assert list(assigned) == ["t1", "t1c", "t2", "flair"]
    assert {m: a.series.name for m, a in assigned.items()} == {
        "t1": "sag 3D T1 BRAVO (series 3)",
        "t1c": "Ax T1 SE +C (series 7)",
        "t2": "AX T2 FSE (series 4)",
        "flair": "AX T2 FLAIR (series 2)",
    }
    assert [(u.series.name, u.modality) for u in unassigned] == [
        ("DWI b1000 (series 5)", "dwi"),
        ("ADC (series 6)", "adc"),
        ("Series 99 (series 1)", None),
    ]
    assigned, _ = assign_modalities(study, modalities=("t1ce", "flair"))
    assert list(assigned) == ["t1c", "flair"]
    with pytest.raises(IdentificationError) as caught:
        assign_modalities([*study, dicom("T1 MPRAGE POST GD", 8)])
    assert str(caught.value) == (
        "two series claim t1c: 'Ax T1 SE +C (series 7)' (SeriesDescription 'Ax T1 SE +C' matches t1c) and "
        "'T1 MPRAGE POST GD (series 8)' (SeriesDescription 'T1 MPRAGE POST GD' matches t1c); name the right one in a "
        'modality map (the other as "ignore")'
    )
    assigned, _ = assign_modalities([*study, dicom("T1 MPRAGE POST GD", 8)], {"Ax T1 SE +C": None})
    assert assigned["t1c"].series.name == "T1 MPRAGE POST GD (series 8)"


def test_load_modality_map(tmp_path):
    good = tmp_path / "map.json"
    good.write_text(json.dumps({"AX T1 (series 3)": "T1Gd", ".*flair.*": "t2f", "MPR COR": None, "loc": "ignore"}))
    assert load_modality_map(good) == {"AX T1 (series 3)": "t1c", ".*flair.*": "flair", "MPR COR": None, "loc": None}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"AX T1": "t1", "SWI": "swi"}))
    with pytest.raises(IdentificationError) as caught:
        load_modality_map(bad)
    assert str(caught.value).startswith(f"modality map {bad}: 'SWI': unknown modality 'swi'; known modalities")
    assert "\n" not in str(caught.value)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(IdentificationError, match="must be a JSON object"):
        load_modality_map(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError):
        load_modality_map(tmp_path / "missing.json")


def test_rules_name_registry_modalities_only():
    assert {modality for modality, _ in DESCRIPTION_RULES} <= set(CANONICAL_MODALITIES)
