"""The application: the SDK's DICOM loading, series selection and SEG writing around the project's hospital-study
steps.

Graph::

    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator -> BrainMVPStudySegmentOperator
        -> DICOMSegmentationWriterOperator

Command line (the SDK's)::

    PYTHONPATH=deploy python -m brainmvp_seg_app -i <DICOM study folder> -o <output folder> -m <bundle folder>

``-m`` is a trained segmentation bundle: ``configs/`` (``inference.json``, ``inference_clinical.json``,
``metadata.json``) and ``models/`` (``model.pt``, ``templates/``). Without the options the SDK's environment
variables (``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``) or its defaults apply.
The application's own settings are environment variables too:

- ``BRAINMVP_CONFIGS``: the config files layered, comma-separated names in the bundle's ``configs/`` (default
  ``inference.json,inference_clinical.json``; put ``quick.json`` in the middle for a model trained with it, or a
  file of your own overrides, e.g. ``{"brain_extraction": "atlas"}``);
- ``BRAINMVP_SELECTION_RULES``: a JSON file of series selection rules in the SDK's format, one selection per
  modality named by it (default
  :data:`~brainmvp_components.clinical.selection.DEFAULT_SELECTION_RULES`).

Outputs in ``<output>/<case>/`` (the case is the study's PatientID): ``<case>_seg.nii.gz``, ``<case>_qc.json``,
``<case>_overlay.png`` and the DICOM SEG ``<SOPInstanceUID>.dcm`` written by the SDK's writer on the reference
series; ``<output>/qc.csv``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_utils import ModelInfo

from brainmvp_components.clinical.dicom_seg import segment_table
from brainmvp_components.clinical.pipeline import segmenter_from_bundle
from brainmvp_components.clinical.selection import load_selection_rules
from brainmvp_components.data.brats import brats_label_names
from brainmvp_seg_app.operators import BrainMVPStudySegmentOperator

__all__ = ["BrainMVPSegApp", "DEFAULT_CONFIGS", "main"]

DEFAULT_CONFIGS = ("inference.json", "inference_clinical.json")
"""The bundle's config files layered by default, in its ``configs/`` folder."""


def _configs() -> list[str]:
    text = os.environ.get("BRAINMVP_CONFIGS", "")
    names = [n.strip() for n in text.split(",") if n.strip()]
    return names or list(DEFAULT_CONFIGS)


def _model_info(bundle: Path) -> ModelInfo:
    try:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError):
        meta = {}
    return ModelInfo("brainmvp", str(meta.get("name", "BrainMVP BraTS segmentation")), str(meta.get("version", "")))


class BrainMVPSegApp(Application):
    """Brain tumour segmentation (BraTS labels) of one MR study given as DICOM, with the project's co-registration,
    brain extraction, alignment, identity and quality checks between the SDK's DICOM operators."""

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self.argv)
        input_path = Path(context.input_path)
        output_path = Path(context.output_path)
        bundle = Path(context.model_path)
        logging.info(f"BrainMVP app: input {input_path}, output {output_path}, bundle {bundle}, configs {_configs()}")

        segmenter = segmenter_from_bundle(bundle, _configs(), output_path, write_dicom_seg=False)
        rules = load_selection_rules(os.environ.get("BRAINMVP_SELECTION_RULES") or None)

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_path, name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=json.dumps(rules), all_matched=True, name="series_selector")
        segment = BrainMVPStudySegmentOperator(self, segmenter=segmenter, name="brainmvp_segment")
        descriptions = [
            SegmentDescription(
                segment_label=entry["label"],
                segmented_property_category=entry["category"],
                segmented_property_type=entry["type"],
                algorithm_name="brainmvp",
                algorithm_version=_model_info(bundle).version or "unknown",
                tracking_id=entry["tracking_id"],
            )
            for entry in segment_table(brats_label_names(segmenter.label_convention))
        ]
        writer = DICOMSegmentationWriterOperator(
            self,
            segment_descriptions=descriptions,
            output_folder=output_path,
            model_info=_model_info(bundle),
            custom_tags={"SeriesDescription": "BrainMVP tumour segmentation"},
            name="dicom_seg_writer",
        )

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, segment, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(
            segment,
            writer,
            {
                ("seg_image", "seg_image"),
                ("reference_series_list", "study_selected_series_list"),
                ("output_folder", "output_folder"),
            },
        )


def main() -> None:
    """Run the application with the SDK's command line."""
    BrainMVPSegApp().run()


if __name__ == "__main__":
    main()
