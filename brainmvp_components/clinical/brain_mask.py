"""Brain extraction on the reference series: detect an already skull-stripped image, else deepbet, else an atlas.

Hospital series arrive with skull and scalp, while the segmentation network was trained on skull-stripped BraTS
images. :func:`extract_brain` gives a brain mask on the input grid by one of:

- ``"none"``: the image is already stripped (:func:`looks_skull_stripped`); the mask is its foreground (voxels off
  the constant background value), holes filled. Forced on a head, it gives the head.
- ``"deepbet"``: the deepbet network (``deepbet.bet.BrainExtraction``, weights in its wheel). It was trained on
  T1-weighted heads; give it the reference series (t1c usually).
- ``"atlas"``: the offline fallback: the packaged Colin27 whole head (T1, 2 mm, MNI frame) registered to the image
  (affine, Mattes mutual information) and its brain mask carried over, dilated by one voxel. Coarser than deepbet
  (a template's brain, not this patient's) but needs nothing beyond ITK.
- ``"auto"``: ``"none"`` when the image is already stripped, else ``"deepbet"`` when it is importable, else
  ``"atlas"``.

Arrays are 3-D ``(i, j, k)`` with a ``(4, 4)`` RAS voxel-to-world affine (nibabel convention).
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainmvp_components.transforms.registration import register_to_template

__all__ = [
    "BRAIN_EXTRACTION_METHODS",
    "BrainMask",
    "looks_skull_stripped",
    "extract_brain",
    "atlas_head",
]

BRAIN_EXTRACTION_METHODS = ("auto", "deepbet", "atlas", "none")

STRIPPED_MIN_BACKGROUND_FRACTION = 0.3
"""A stripped image has at least this fraction of its voxels exactly at the background value (a brain of 1.5 L
fills under 20% of a BraTS 240 x 240 x 155 mm field of view; noise makes a head's background non-constant)."""
STRIPPED_MAX_FOREGROUND_ML = 2200.0
"""A stripped image's foreground (voxels off the background value) is at most a large brain, 2.2 L; a head with
scalp is 3.5 to 5 L, and a noisy background makes the whole field of view foreground."""


@dataclass
class BrainMask:
    """A brain mask on the input grid.

    Attributes:
        mask: bool ``(i, j, k)``, True inside the brain.
        method: the method used: ``"none"``, ``"deepbet"`` or ``"atlas"``.
        volume_ml: the mask's volume.
        already_stripped: whether :func:`looks_skull_stripped` found the input stripped.
        seconds: wall time.
    """

    mask: np.ndarray
    method: str
    volume_ml: float
    already_stripped: bool
    seconds: float

    def as_record(self) -> dict:
        """JSON-ready summary (no mask)."""
        return {
            "method": self.method,
            "volume_ml": round(float(self.volume_ml), 1),
            "already_stripped": bool(self.already_stripped),
            "seconds": round(float(self.seconds), 3),
        }


def _voxel_ml(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def _background_value(array: np.ndarray) -> float:
    """The value of the image's corner voxels when they agree, else its minimum: what a stripped image is
    filled with outside the brain."""
    corners = array[np.ix_(*[[0, n - 1] for n in array.shape])].ravel()
    return float(corners[0]) if np.all(corners == corners[0]) else float(array.min())


def _foreground(array: np.ndarray) -> np.ndarray:
    return np.asarray(array) != _background_value(np.asarray(array))


def looks_skull_stripped(array: np.ndarray, affine: np.ndarray) -> tuple[bool, dict]:
    """Whether an image looks skull-stripped already.

    A stripped image is a brain in an exactly constant background (zero, usually): at least
    :data:`STRIPPED_MIN_BACKGROUND_FRACTION` of its voxels hold the background value and the rest, its
    foreground, is at most :data:`STRIPPED_MAX_FOREGROUND_ML`. A head scan has a noisy background and a
    foreground of several litres.

    Args:
        array: the image ``(i, j, k)``.
        affine: its ``(4, 4)`` RAS affine (for the voxel volume).

    Returns:
        ``(stripped, evidence)``; evidence: ``background_value``, ``background_fraction`` (voxels exactly at it)
        and ``foreground_ml``.
    """
    array = np.asarray(array)
    if array.ndim != 3 or array.size == 0:
        raise ValueError(f"looks_skull_stripped takes a non-empty 3-D image, got shape {array.shape}")
    background = _background_value(array)
    foreground = array != background
    fraction = 1.0 - float(foreground.mean())
    foreground_ml = float(foreground.sum()) * _voxel_ml(affine)
    stripped = fraction >= STRIPPED_MIN_BACKGROUND_FRACTION and 0 < foreground_ml <= STRIPPED_MAX_FOREGROUND_ML
    evidence = {
        "background_value": background,
        "background_fraction": round(fraction, 4),
        "foreground_ml": round(foreground_ml, 1),
    }
    return stripped, evidence


def atlas_head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packaged Colin27 head: ``(head float32 (90, 108, 90), brain mask bool, affine (4, 4))``, 2 mm, MNI."""
    import nibabel as nib

    resources = importlib.resources.files("brainmvp_components.data.resources")
    with importlib.resources.as_file(resources / "colin27_head_2mm.nii.gz") as path:
        head = nib.load(path)
        head_array, affine = head.get_fdata(dtype=np.float32), head.affine.copy()
    with importlib.resources.as_file(resources / "colin27_brain_mask_2mm.nii.gz") as path:
        mask = np.asarray(nib.load(path).dataobj) > 0
    return head_array, mask, affine


def _stripped_mask(array: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(_foreground(array))


@functools.lru_cache(maxsize=2)
def _deepbet_model(use_gpu: bool):
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=not use_gpu)


def _deepbet_mask(array: np.ndarray, affine: np.ndarray, use_gpu: bool) -> np.ndarray:
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    _, mask, _ = _deepbet_model(use_gpu).run(image)
    return np.asarray(mask.dataobj) > 0


def _atlas_mask(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from brainmvp_components.clinical.coregister import resample_to_grid

    head, brain, head_affine = atlas_head()
    registration = register_to_template(array, affine, head, head_affine, level_spacings_mm=(8.0, 4.0))
    carried = resample_to_grid(
        brain.astype(np.float32), head_affine, affine, np.asarray(array).shape, transform=registration.transform
    )
    return ndimage.binary_dilation(carried >= 0.5, iterations=1)


def extract_brain(array: np.ndarray, affine: np.ndarray, *, method: str = "auto", use_gpu: bool = False) -> BrainMask:
    """A brain mask of the image, on its grid.

    Args:
        array: the image ``(i, j, k)`` (T1-like for ``"deepbet"``; any contrast for ``"atlas"``).
        affine: its ``(4, 4)`` RAS affine.
        method: ``"auto"``, ``"deepbet"``, ``"atlas"`` or ``"none"`` (see the module docstring).
        use_gpu: let deepbet run on its default accelerator (CPU otherwise).

    Returns:
        the :class:`BrainMask`.

    Raises:
        ValueError: an unknown method or a non-3-D image.
        ImportError: ``"deepbet"`` asked for but not installed.
    """
    if method not in BRAIN_EXTRACTION_METHODS:
        raise ValueError(f"unknown brain extraction method {method!r}; use one of {list(BRAIN_EXTRACTION_METHODS)}")
    start = time.perf_counter()
    array = np.asarray(array, dtype=np.float32)
    stripped, _ = looks_skull_stripped(array, affine)
    if method == "auto":
        if stripped:
            method = "none"
        else:
            method = "deepbet" if importlib.util.find_spec("deepbet") is not None else "atlas"
    if method == "none":
        mask = _stripped_mask(array)
    elif method == "deepbet":
        if importlib.util.find_spec("deepbet") is None:
            raise ImportError("brain extraction method 'deepbet' needs deepbet: pip install deepbet")
        mask = _deepbet_mask(array, affine, use_gpu)
    else:
        mask = _atlas_mask(array, affine)
    return BrainMask(
        mask=mask,
        method=method,
        volume_ml=float(mask.sum()) * _voxel_ml(affine),
        already_stripped=stripped,
        seconds=time.perf_counter() - start,
    )
