"""Data: modality registry, atlas and label conventions, case discovery and checks, splits, data sets, the cohort."""
