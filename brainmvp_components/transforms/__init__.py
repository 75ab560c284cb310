"""MONAI-style transforms (array + dictionary pairs) used by the brainmvp bundles."""
