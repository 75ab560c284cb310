"""BrainMVP components: the Python that the brainmvp MONAI bundles reference."""

__version__ = "0.1.0"
