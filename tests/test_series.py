"""Reading hospital series (DICOM and NIfTI) and studies: geometry round trips, ITK cross-check, skips and errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from brainmvp_components.data.series import (
    NotAVolumeError,
    ScanSeries,
    SeriesError,
    SkippedSeries,
    read_dicom_series,
    read_nifti_series,
    read_study,
    write_dicom_series,
)

SHAPE = (16, 12, 10)


def rotation(degrees_x: float, degrees_y: float, degrees_z: float) -> np.ndarray:
    rx, ry, rz = np.radians([degrees_x, degrees_y, degrees_z])
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def make_affine(direction: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=float) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


AXIAL = make_affine(np.eye(3), (1.0, 1.0, 2.0), (-8.0, -6.0, 0.0))
OBLIQUE = make_affine(rotation(12, -20, 33), (0.9, 1.1, 2.5), (-10.5, 20.25, 5.0))
# sagittal as scanners write it: rows run posterior, columns inferior, slices from right to left (RAS)
SAGITTAL = make_affine(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]]), (0.8, 0.8, 3.0), (-15.0, 40.0, 60.0))


def volume(seed: int = 0, shape=SHAPE, integer: bool = True) -> np.ndarray:
    data = np.random.default_rng(seed).normal(300, 80, shape)
    return np.round(data).astype(np.float32) if integer else data.astype(np.float32)


def write(out_dir: Path, description: str, *, affine=AXIAL, array=None, **kwargs) -> list[Path]:
    return write_dicom_series(
        volume() if array is None else array, affine, out_dir, series_description=description, **kwargs
    )


def move_into(files: list[Path], folder: Path, prefix: str) -> list[Path]:
    """Move written files into ``folder`` under new names, as a PACS export mixing series does."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.move(f, folder / f"{prefix}_{f.name}")) for f in files]


def write_text_report(path: Path, description: str = "Report", series_number: int = 99) -> Path:
    """A Basic Text SR without pixel data, as a study export holds."""
    ds = Dataset()
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["sr", description])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["sr series", description])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["sr study"])
    ds.Modality = "SR"
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def itk_affine(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Affine (RAS) and ``(i, j, k)`` array of a DICOM folder as ITK's GDCM series reader sees them."""
    itk = pytest.importorskip("itk")
    image = itk.imread(str(folder), itk.F)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()) @ np.diag(np.asarray(image.GetSpacing()))
    lps[:3, 3] = np.asarray(image.GetOrigin())
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, np.transpose(itk.array_from_image(image), (2, 1, 0))


# round trips -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [AXIAL, OBLIQUE, SAGITTAL], ids=["axial", "oblique", "sagittal"])
def test_written_series_reads_back_exactly(tmp_path, affine):
    data = volume(1)
    files = write(tmp_path / "s", "AX T1", affine=affine, array=data, series_number=3)
    series = read_dicom_series(files[::-1])
    assert isinstance(series, ScanSeries)
    assert series.name == "AX T1 (series 3)" and series.source == "dicom" and series.path == tmp_path / "s"
    assert series.array.dtype == np.float32 and series.shape == SHAPE
    np.testing.assert_array_equal(series.array, data)
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    assert series.dicom_files == files
    np.testing.assert_allclose(series.spacing, np.linalg.norm(affine[:3, :3], axis=0), atol=1e-6)


@pytest.mark.parametrize("affine", [OBLIQUE, SAGITTAL], ids=["oblique", "sagittal"])
def test_affine_agrees_with_itk_gdcm_reader(tmp_path, affine):
    data = volume(2)
    write(tmp_path / "s", "t1", affine=affine, array=data)
    itk_ras, itk_array = itk_affine(tmp_path / "s")
    series = read_dicom_series(sorted((tmp_path / "s").iterdir()))
    np.testing.assert_allclose(series.affine, itk_ras, atol=1e-4)
    np.testing.assert_allclose(series.array, itk_array, atol=1e-3)


def test_float_data_keeps_its_range_through_int16_rescale(tmp_path):
    data = volume(3, integer=False) * 1000.0 + 2.5e5
    series = read_dicom_series(write(tmp_path / "s", "float", array=data))
    np.testing.assert_allclose(series.array, data, rtol=0, atol=float(np.ptp(data)) / 60000)
    assert abs(float(series.array.min()) - float(data.min())) < float(np.ptp(data)) / 60000


def test_left_handed_affine_reads_as_the_same_voxels_with_k_reversed(tmp_path):
    flipped = AXIAL @ np.diag([1.0, 1.0, -1.0, 1.0])
    data = volume(4)
    series = read_dicom_series(write(tmp_path / "s", "flip", affine=flipped, array=data))
    np.testing.assert_array_equal(series.array, data[:, :, ::-1])
    k_last = np.array([0, 0, SHAPE[2] - 1, 1.0])
    np.testing.assert_allclose(series.affine @ [0, 0, 0, 1.0], flipped @ k_last, atol=1e-4)


def test_header_fields_extra_tags_and_deterministic_uids(tmp_path):
    tags = {"EchoTime": 12.0, "RepetitionTime": 550, "ContrastBolusAgent": "Gadovist", "ProtocolName": "t1_se"}
    first = write(tmp_path / "a", "Ax T1 SE +C", patient_id="P1", extra_tags=tags)
    again = write(tmp_path / "b", "Ax T1 SE +C", patient_id="P1", extra_tags=tags)
    other = write(tmp_path / "c", "AX T2", patient_id="P1", series_number=2)
    header = read_dicom_series(first).header
    assert header["EchoTime"] == 12.0 and header["RepetitionTime"] == 550.0 and header["InversionTime"] is None
    assert header["ContrastBolusAgent"] == "Gadovist" and header["ProtocolName"] == "t1_se"
    assert header["ImageType"] == ["ORIGINAL", "PRIMARY", "M", "ND"] and header["Modality"] == "MR"
    assert header["SeriesNumber"] == 1 and header["PatientID"] == "P1" and header["SliceThickness"] == 2.0
    again_header, other_header = read_dicom_series(again).header, read_dicom_series(other).header
    for uid in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert header[uid] == again_header[uid]
    assert header["StudyInstanceUID"] == other_header["StudyInstanceUID"]
    assert header["FrameOfReferenceUID"] == other_header["FrameOfReferenceUID"]
    assert header["SeriesInstanceUID"] != other_header["SeriesInstanceUID"]
    ds = pydicom.dcmread(first[0])
    assert ds.SpacingBetweenSlices == 2.0 and ds.Rows == SHAPE[1] and ds.Columns == SHAPE[0]
    with pytest.raises(ValueError, match="'EchoTme' is not a DICOM keyword"):
        write(tmp_path / "d", "x", extra_tags={"EchoTme": 1})


def test_written_series_is_a_valid_source_for_highdicom_seg(tmp_path):
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in write(tmp_path / "s", "AX T1", affine=OBLIQUE)]
    mask = np.zeros((len(sources), SHAPE[1], SHAPE[0]), dtype=bool)
    mask[4:6, 3:8, 3:9] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID


# NIfTI -------------------------------------------------------------------------------------------------------------


def test_nifti_series_with_description_and_one_volume_4d(tmp_path):
    image = nib.Nifti1Image(volume(5)[..., None], OBLIQUE)
    image.header["descrip"] = b"AX T2 FLAIR"
    nib.save(image, tmp_path / "flair.nii.gz")
    series = read_nifti_series(tmp_path / "flair.nii.gz")
    assert series.name == "flair.nii.gz" and series.source == "nifti" and series.shape == SHAPE
    assert series.header == {"description": "AX T2 FLAIR"} and series.dicom_files == []
    np.testing.assert_allclose(series.affine, OBLIQUE, atol=1e-5)


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((8, 8, 4, 2)), "series 'bad.nii.gz': is a 4-D NIfTI of shape (8, 8, 4, 2) with 2 volumes; "),
        (np.zeros(8), "series 'bad.nii.gz': has 1 dimension(s) (8,); an image has at least 2"),
        (np.full((4, 4, 4), np.nan), "series 'bad.nii.gz': has 64 non-finite voxel value(s) (NaN or infinity)"),
    ],
    ids=["4d", "1d", "nan"],
)
def test_bad_nifti_is_a_one_line_error(tmp_path, data, message):
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(SeriesError) as caught:
        read_nifti_series(tmp_path / "bad.nii.gz")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


# studies -----------------------------------------------------------------------------------------------------------


def test_study_with_two_series_mixed_in_one_folder(tmp_path):
    case = tmp_path / "case"
    move_into(write(tmp_path / "a", "AX T1", series_number=2), case / "DICOM", "A")
    move_into(write(tmp_path / "b", "AX T2 FSE", affine=OBLIQUE, series_number=3), case / "DICOM", "B")
    (case / "DICOM" / "README.txt").write_text("exported by PACS")
    series, skipped = read_study(case)
    assert [s.name for s in series] == ["AX T1 (series 2)", "AX T2 FSE (series 3)"] and skipped == []
    assert all(s.path == case / "DICOM" and len(s.dicom_files) == SHAPE[2] for s in series)
    np.testing.assert_allclose(series[1].affine, OBLIQUE, atol=1e-4)


def test_study_with_a_folder_per_series_nifti_and_ignored_files(tmp_path):
    case = tmp_path / "case"
    write(case / "S2", "AX T1", series_number=2)
    write(case / "S3", "", series_number=3)
    nib.save(nib.Nifti1Image(volume(6), AXIAL), case / "extra_flair.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AXIAL), case / "extra_seg.nii.gz")
    (case / ".hidden").mkdir()
    write(case / ".hidden", "hidden")
    (case / "S2" / ".DS_Store").write_bytes(b"\0" * 200)
    (case / "notes.json").write_text("{}")
    series, skipped = read_study(case)
    assert [s.name for s in series] == ["AX T1 (series 2)", "S3 (series 3)", "extra_flair.nii.gz"]
    assert [s.source for s in series] == ["dicom", "dicom", "nifti"] and skipped == []
    assert series[0].path == case / "S2"


def test_localisers_and_reports_are_skipped_with_reasons(tmp_path):
    case = tmp_path / "case"
    write(case / "T1", "AX T1")
    write(case / "loc", "AAHead_Scout", series_number=1, extra_tags={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    plane_uid = generate_uid(entropy_srcs=["3-plane"])
    for n, affine in enumerate([AXIAL, SAGITTAL, OBLIQUE]):
        files = write(
            tmp_path / f"p{n}", "3-Plane Loc", array=volume(n, (16, 12, 1)), affine=affine, series_uid=plane_uid
        )
        move_into(files, case / "plane", f"P{n}")
    write(case / "one", "Single", array=volume(7, (16, 12, 1)), series_number=5)
    write(case / "two", "Two", array=volume(7, (16, 12, 2)), series_number=6)
    write_text_report(case / "SR" / "report.dcm")
    series, skipped = read_study(case)
    assert [s.name for s in series] == ["AX T1 (series 1)"]
    assert skipped == [
        SkippedSeries("3-Plane Loc (series 1)", case / "plane", "is a localiser (3 orientations with 1/1/1 slices)"),
        SkippedSeries("AAHead_Scout (series 1)", case / "loc", "is a localiser (ImageType LOCALIZER)"),
        SkippedSeries("Report (series 99)", case / "SR", "is not an image (Basic Text SR Storage, no pixel data)"),
        SkippedSeries("Single (series 5)", case / "one", "is a single 2-D slice (a localiser?), not a volume"),
        SkippedSeries("Two (series 6)", case / "two", "has only 2 slices (a localiser?), not a volume"),
    ]


def test_missing_slice_is_an_error_naming_series_case_and_positions(tmp_path):
    case = tmp_path / "case"
    files = write(case / "T1", "AX T1", series_number=4)
    files[4].unlink()
    with pytest.raises(SeriesError) as caught:
        read_study(case)
    assert str(caught.value) == (
        f"series 'AX T1 (series 4)' in case folder {case}: is missing slice(s): gap of 4 mm between positions "
        "6 and 10 mm (slice step 2 mm)"
    )
    write(case / "T2", "AX T2")
    series, skipped = read_study(case, strict=False)
    assert [s.name for s in series] == ["AX T2 (series 1)"]
    assert skipped[0].name == "AX T1 (series 4)" and skipped[0].reason.startswith("is missing slice(s): gap of 4 mm")


def test_two_echoes_in_one_series_is_an_error(tmp_path):
    case = tmp_path / "case"
    uid = generate_uid(entropy_srcs=["dual echo"])
    for n, te in enumerate((15.0, 90.0)):
        files = write(tmp_path / f"e{n}", "PD/T2 TSE", series_uid=uid, extra_tags={"EchoTime": te})
        move_into(files, case / "DE", f"E{n}")
    with pytest.raises(SeriesError) as caught:
        read_study(case)
    assert str(caught.value) == (
        f"series 'PD/T2 TSE (series 1)' in case folder {case}: has 10 duplicate slice position(s) among 20 slices: "
        "several echoes or acquisitions in one series (EchoTime values 15, 90 ms); export them as separate series"
    )


def test_mixed_orientations_inconsistent_grid_and_multiframe_are_errors(tmp_path):
    uid = generate_uid(entropy_srcs=["mixed"])
    mixed = write(tmp_path / "m0", "MIX", series_uid=uid) + write(
        tmp_path / "m1", "MIX", affine=SAGITTAL, series_uid=uid
    )
    with pytest.raises(SeriesError, match=r"^series 'MIX \(series 1\)': mixes 2 slice orientations \(10/10 slices\)"):
        read_dicom_series(mixed)
    uid = generate_uid(entropy_srcs=["grid"])
    grid = write(tmp_path / "g0", "GRID", series_uid=uid) + write(
        tmp_path / "g1", "GRID", array=volume(0, (16, 14, 10)), series_uid=uid
    )
    with pytest.raises(SeriesError, match=r"^series 'GRID \(series 1\)': has inconsistent Rows across its slices"):
        read_dicom_series(grid)
    enhanced = write(tmp_path / "mf", "MF")
    ds = pydicom.dcmread(enhanced[0])
    ds.NumberOfFrames = 3
    ds.save_as(enhanced[0])
    with pytest.raises(SeriesError) as caught:
        read_dicom_series(enhanced)
    assert str(caught.value) == (
        "series 'MF (series 1)': is enhanced multi-frame DICOM (3 frames in one file), which is not supported; "
        "convert the series to NIfTI with dcm2niix and give the NIfTI file"
    )


def test_study_without_usable_series_lists_what_was_skipped(tmp_path):
    case = tmp_path / "case"
    write_text_report(case / "report.dcm")
    bad = case / "broken.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), bad)
    with pytest.raises(SeriesError) as caught:
        read_study(case, strict=False)
    message = str(caught.value)
    assert message.startswith(f"case folder {case}: no usable series (skipped: Report (series 99) (is not an image")
    assert "broken.nii.gz (is a 4-D NIfTI" in message and "\n" not in message
    with pytest.raises(NotAVolumeError):
        read_dicom_series([case / "report.dcm"])
    with pytest.raises(SeriesError, match=r"no usable series \(skipped: no NIfTI or DICOM image files found\)"):
        read_study(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_uneven_spacing_and_files_of_several_series_are_errors(tmp_path):
    files = write(tmp_path / "u", "UNEVEN")
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], 10.8]
    ds.save_as(files[5])
    with pytest.raises(SeriesError) as caught:
        read_dicom_series(files)
    assert str(caught.value) == "series 'UNEVEN (series 1)': has uneven slice spacing (1.2 to 2.8 mm)"
    other = write(tmp_path / "o", "OTHER")
    with pytest.raises(SeriesError, match=r"^series 'OTHER \(series 1\)': files belong to 2 series"):
        read_dicom_series(other + files)
