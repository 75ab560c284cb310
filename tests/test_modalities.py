import pytest

from brainmvp_components.data.modalities import (
    CANONICAL_MODALITIES,
    OFFICIAL_TEMPLATE_ORDER,
    UnknownModalityError,
    canonical_modalities,
    canonical_modality,
    is_segmentation_file,
    modality_from_filename,
    modality_index,
)


@pytest.mark.parametrize(
    "alias, expected",
    [
        # BraTS 2018-2021
        ("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "flair"),
        # BraTS 2023
        ("t1n", "t1"), ("t1c", "t1c"), ("t2w", "t2"), ("t2f", "flair"),
        # UCSF-PDGM / ISLES / IXI spellings, any case
        ("T1c", "t1c"), ("T1Gd", "t1c"), ("FLAIR", "flair"), ("ADC", "adc"), ("DWI", "dwi"),
        ("PD", "pd"), ("MRA", "mra"), ("T2-FLAIR", "flair"), ("T1_post", "t1c"),
    ],
)  # fmt: skip
def test_aliases(alias, expected):
    assert canonical_modality(alias) == expected


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownModalityError) as err:
        canonical_modality("swi")
    message = str(err.value)
    assert "'swi'" in message
    for name in CANONICAL_MODALITIES:
        assert name in message
    assert "t1ce" in message


def test_duplicates_rejected():
    with pytest.raises(ValueError, match="more than once"):
        canonical_modalities(["t1ce", "T1c"])


def test_orders_cover_the_same_names():
    assert sorted(OFFICIAL_TEMPLATE_ORDER) == sorted(CANONICAL_MODALITIES)
    assert modality_index("t1ce") == CANONICAL_MODALITIES.index("t1c")


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz", "t1c"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("BraTS-PED-00001-000-t1n.nii.gz", "t1"),
        ("UCSF-PDGM-0004_T1c.nii.gz", "t1c"),
        ("IXI002-Guys-0828-PD.nii.gz", "pd"),
        ("sub-strokecase0001_ses-0001_adc.nii.gz", "adc"),
        ("flair.nii", "flair"),
        ("BraTS2021_00000_seg.nii.gz", None),
        ("notes.txt", None),
    ],
)
def test_modality_from_filename(filename, expected):
    assert modality_from_filename(filename) == expected


def test_segmentation_files():
    assert is_segmentation_file("BraTS2021_00000_seg.nii.gz")
    assert is_segmentation_file("BraTS-GLI-00000-000-seg.nii.gz")
    assert not is_segmentation_file("BraTS2021_00000_t1.nii.gz")
