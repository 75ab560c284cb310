"""DICOM SEG of a tumour label map on a small oblique source series: round trip, references, skipped segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from brainmvp_components.clinical.dicom_seg import read_dicom_seg, segment_property_type, write_dicom_seg


def write_mr_series(array: np.ndarray, affine: np.ndarray, out_dir: Path) -> list[Path]:
    """A minimal MR series of ``array (columns, rows, slices)`` placed by the RAS ``affine``: slice ``k`` is
    ``array[:, :, k].T``; ImageOrientation/Position from the affine (converted to LPS)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]  # along a row (i), down a column (j)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "ANON^", "ANON", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "1", "", "", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "MR", 3, k + 1, "test"
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in (lps[:3, :3] @ [0, 0, k] + lps[:3, 3])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(array[:, :, k].T.astype(np.uint16)).tobytes()
        path = out_dir / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


@pytest.fixture
def source(tmp_path):
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xz", [20, -15], degrees=True).as_matrix() @ np.diag([1.0, 1.2, 5.0])
    affine[:3, 3] = (-10.0, 20.0, -30.0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, size=(24, 20, 8))
    return write_mr_series(image, affine, tmp_path / "mr")


def tumour_labels(shape=(24, 20, 8), enhancing=4) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[5:15, 4:12, 2:6] = 2
    labels[8:12, 6:10, 3:5] = enhancing
    labels[9:11, 7:9, 3] = 1
    labels[20, 3, 1] = 1  # a lone voxel on another slice, column 20 row 3: catches a transposition
    return labels


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_round_trip_label_for_label(source, tmp_path, segmentation_type):
    labels = tumour_labels()
    path = write_dicom_seg(labels, source, tmp_path / "seg.dcm", segmentation_type=segmentation_type)
    np.testing.assert_array_equal(read_dicom_seg(path, source), labels)
    assert not list(tmp_path.glob(".seg.dcm.*"))


def test_seg_references_the_source_series(source, tmp_path):
    path = write_dicom_seg(tumour_labels(), source, tmp_path / "seg.dcm", algorithm_version="9.9")
    seg, mr = pydicom.dcmread(path), pydicom.dcmread(source[0])
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == mr.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == mr.FrameOfReferenceUID
    assert seg.StudyInstanceUID == mr.StudyInstanceUID
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert set(segments) == {"necrotic tumour core", "peritumoural oedema", "enhancing tumour"}
    category = segments["peritumoural oedema"].SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
    assert segments["peritumoural oedema"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "79654002"
    assert segments["necrotic tumour core"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "6574001"
    assert segments["enhancing tumour"].SegmentAlgorithmName == "brainmvp"


def test_empty_segments_are_skipped_and_2023_labels_kept(source, tmp_path):
    labels = tumour_labels(enhancing=3)
    labels[labels == 1] = 0  # no necrosis
    names = {1: "necrotic tumour core", 2: "peritumoural oedema", 3: "enhancing tumour"}
    path = write_dicom_seg(labels, source, tmp_path / "seg.dcm", label_names=names)
    assert [s.SegmentLabel for s in pydicom.dcmread(path).SegmentSequence] == [
        "peritumoural oedema",
        "enhancing tumour",
    ]
    np.testing.assert_array_equal(read_dicom_seg(path, source), labels)


def test_bad_inputs_are_one_clear_error(source, tmp_path):
    with pytest.raises(ValueError, match=r"labels have shape \(20, 24, 8\), the source series is \(24, 20, 8\)"):
        write_dicom_seg(np.zeros((20, 24, 8), np.uint8), source, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="label values \\[7\\] have no name"):
        write_dicom_seg(np.full((24, 20, 8), 7, np.uint8), source, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="empty"):
        write_dicom_seg(np.zeros((24, 20, 8), np.uint8), source, tmp_path / "seg.dcm")


def test_property_types():
    assert segment_property_type("Necrotic core").value == "6574001"
    assert segment_property_type("enhancing tumour").value == "108369006"
