"""BrainMVP brain tumour segmentation of a hospital MR study as a MONAI Deploy App SDK application.

Run it as ``python -m brainmvp_seg_app -i <DICOM folder> -o <output folder> -m <bundle folder>`` with ``deploy/`` on
``PYTHONPATH`` (see :mod:`brainmvp_seg_app.app`). The operators' project-side work is done by
``brainmvp_components.clinical`` (series selection, the hospital-study steps, the SEG frames).
"""
