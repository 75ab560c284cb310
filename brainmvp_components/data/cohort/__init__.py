"""The embedded cohort: synthetic multi-parametric brain MRI on real MNI anatomy (``make_cohort`` writes one)."""

from brainmvp_components.data.cohort.anatomy import (
    MNI_FILES,
    MNITissueMaps,
    load_mni_tissue_maps,
    mni_file,
    nominal_brain,
    nominal_tissues,
)
from brainmvp_components.data.cohort.naming import (
    COHORT_KINDS,
    LABEL_CONVENTIONS,
    case_id,
    label_values,
    modality_file_suffix,
)
from brainmvp_components.data.cohort.signals import (
    COHORT_MODALITIES,
    GADOLINIUM_T1,
    SEQUENCES,
    TISSUE_PARAMETERS,
    TISSUES,
    SequenceParameters,
    TissueParameters,
    csf_null_inversion_time,
    inversion_recovery_signal,
    spin_echo_signal,
    tissue_signals,
)
from brainmvp_components.data.cohort.sites import SITES, SITES_CSV_NAME, Site, assign_sites, get_site
from brainmvp_components.data.cohort.subjects import subject_design, synthesise_subject
from brainmvp_components.data.cohort.writer import PREVIEW_DIR_NAME, make_cohort

__all__ = [
    "COHORT_KINDS",
    "LABEL_CONVENTIONS",
    "COHORT_MODALITIES",
    "TISSUES",
    "TissueParameters",
    "TISSUE_PARAMETERS",
    "GADOLINIUM_T1",
    "SequenceParameters",
    "SEQUENCES",
    "PREVIEW_DIR_NAME",
    "spin_echo_signal",
    "inversion_recovery_signal",
    "csf_null_inversion_time",
    "load_mni_tissue_maps",
    "MNITissueMaps",
    "MNI_FILES",
    "case_id",
    "modality_file_suffix",
    "label_values",
    "subject_design",
    "synthesise_subject",
    "tissue_signals",
    "mni_file",
    "nominal_brain",
    "nominal_tissues",
    "make_cohort",
    "SITES",
    "SITES_CSV_NAME",
    "Site",
    "assign_sites",
    "get_site",
]
