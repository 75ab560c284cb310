"""Hospital studies: series as exported (DICOM or NIfTI, own grids, skull on) to a segmentation on the reference
series, with co-registration, brain extraction, modality checks, DICOM SEG and quality control."""
