"""The application's own operator: the hospital-study steps on the series that the SDK's selector chose."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries

from brainmvp_components.clinical.dicom_seg import segment_frames
from brainmvp_components.clinical.pipeline import CaseResult, HospitalStudySegmenter
from brainmvp_components.clinical.selection import assign_selected_series
from brainmvp_components.data.brats import brats_label_names
from brainmvp_components.data.series import SkippedSeries

__all__ = ["BrainMVPStudySegmentOperator", "case_name"]

logger = logging.getLogger(__name__)


def case_name(study_selection: StudySelectedSeries) -> str:
    """The case id of a study: its PatientID (characters other than letters, digits, ``.``, ``_`` and ``-``
    replaced), else its StudyInstanceUID."""
    patient = ""
    for selected in study_selection.selected_series:
        instances = selected.series.get_sop_instances()
        if instances:
            patient = str(instances[0].get_native_sop_instance().get("PatientID", "") or "")
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", patient).strip("._")
    return name or str(study_selection.study.StudyInstanceUID)


def _files(series: DICOMSeries) -> list[str]:
    files = []
    for instance in series.get_sop_instances():
        filename = getattr(instance.get_native_sop_instance(), "filename", None)
        if not filename:
            raise ValueError(
                f"series {series.SeriesDescription!r} ({series.SeriesInstanceUID}) was not read from files; "
                "this operator takes the series of DICOMDataLoaderOperator"
            )
        files.append(str(filename))
    return files


def _series_in_slice_order(series: DICOMSeries, files: list[Path]) -> DICOMSeries:
    """A copy of ``series`` whose SOP instances follow ``files`` (the slice order of the label map), as the SEG
    writer pairs frame ``k`` with instance ``k``."""
    by_file = {str(Path(i.get_native_sop_instance().filename)): i for i in series.get_sop_instances()}
    ordered = DICOMSeries(series.SeriesInstanceUID)
    for name in ("Modality", "SeriesDescription", "SeriesNumber", "SeriesDate", "SeriesTime", "PatientPosition"):
        value = getattr(series, name, None)
        if value is not None:
            setattr(ordered, name, value)
    for path in files:
        ordered.add_sop_instance(by_file[str(Path(path))].get_native_sop_instance())
    return ordered


class BrainMVPStudySegmentOperator(Operator):
    """Segment one study's selected series with :class:`HospitalStudySegmenter`: co-registration, brain
    extraction, alignment to the model's frame, identity check, the bundle's network, QC.

    Named input:
        study_selected_series_list: ``list[StudySelectedSeries]`` from ``DICOMSeriesSelectorOperator``, one study,
            each selection named by a modality.

    Named outputs:
        seg_image: the SEG frames ``(slices, rows, columns)`` of the labels on the reference series, label values
            as segment numbers (:func:`~brainmvp_components.clinical.dicom_seg.segment_frames`).
        reference_series_list: ``list[StudySelectedSeries]`` holding only the reference series, its instances in
            the frames' order: what ``DICOMSegmentationWriterOperator`` references.
        output_folder: the case's output folder, where the SEG goes.

    File output, in ``<output folder>/<case>/``: the labels as NIfTI on the reference grid, the overlay and the
    QC record (``<case>_qc.json``); ``<output folder>/qc.csv``. A study that cannot be segmented raises with the
    one-line summary of the hospital-study path (the QC table records the reason).

    Args:
        fragment: the application.
        segmenter: the hospital-study segmenter (its ``output_dir`` is the application's output folder); its
            DICOM SEG writing is left to the SDK's writer.
    """

    def __init__(self, fragment: Fragment, *args: Any, segmenter: HospitalStudySegmenter, **kwargs: Any) -> None:
        self.segmenter = segmenter
        self.input_name = "study_selected_series_list"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name)
        spec.output("seg_image")
        spec.output("reference_series_list")
        spec.output("output_folder").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        selections = op_input.receive(self.input_name)
        labels, reference_list, case_dir = self.segment(selections)
        label_names = brats_label_names(self.segmenter.label_convention)
        op_output.emit(segment_frames(labels, label_names), "seg_image")
        op_output.emit(reference_list, "reference_series_list")
        op_output.emit(case_dir, "output_folder")

    def segment(self, selections: list[StudySelectedSeries]) -> tuple[np.ndarray, list[StudySelectedSeries], Path]:
        """The labels on the reference series' grid ``(columns, rows, slices)``, the reference series for the SEG
        writer and the case's output folder.

        Raises:
            ValueError: no study, or several (one study per run, the SDK's convention).
            InferenceFailed: the study could not be segmented, or was flagged with ``fail_on_flags``.
        """
        if not selections:
            raise ValueError(
                "no series of the input matched the series selection rules (MR series named as t1, t1c, t2 or "
                "FLAIR); give the application rules for this site's names"
            )
        if len(selections) > 1:
            uids = ", ".join(str(s.study.StudyInstanceUID) for s in selections)
            raise ValueError(f"the input holds {len(selections)} studies ({uids}); give the application one study")
        study_selection = selections[0]
        case = case_name(study_selection)
        start = time.perf_counter()
        try:
            selected = [(s.selection_name, _files(s.series)) for s in study_selection.selected_series]
            assigned, skipped = assign_selected_series(selected, self.segmenter.modalities, case=case)
            chosen = {s.series.SeriesInstanceUID for s in study_selection.selected_series}
            for series in study_selection.study.get_all_series():
                if series.SeriesInstanceUID not in chosen:
                    name = f"{series.SeriesDescription} (series {series.SeriesNumber})"
                    skipped.append(SkippedSeries(name, Path(_files(series)[0]).parent, "matched no selection rule"))
            for item in skipped:
                logger.info(f"{case}: series '{item.name}' skipped: {item.reason}")
            for modality, ident in assigned.items():
                logger.info(f"{case}: {modality} <- '{ident.series.name}' ({ident.evidence})")
            seconds = {"read_and_identify": round(time.perf_counter() - start, 2)}
            result = self.segmenter.segment_series(case, assigned, skipped=skipped, seconds=seconds)
        except Exception as err:  # recorded in qc.csv and raised as the run's summary, as the study folder path does
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            logger.error(f"{case}: failed: {message}")
            self.segmenter.output_dir.mkdir(parents=True, exist_ok=True)
            self.segmenter.finish([CaseResult(case, error=message)])
            raise AssertionError("unreachable: finish raises for a failed case") from err
        self.segmenter.finish([result])
        reference = assigned[result.qc["reference_modality"]].series
        labels = np.asarray(nib.load(result.outputs["segmentation"]).dataobj)
        ordered = _series_in_slice_order(
            next(
                s.series
                for s in study_selection.selected_series
                if s.series.SeriesInstanceUID == reference.header.get("SeriesInstanceUID")
            ),
            reference.dicom_files,
        )
        reference_list = StudySelectedSeries(study_selection.study)
        reference_list.add_selected_series(SelectedSeries(result.qc["reference_modality"], ordered, None))
        return labels, [reference_list], Path(result.outputs["segmentation"]).parent
