"""Distilled modality templates: one learnable volume per MRI modality in atlas space.

BrainMVP (Rui et al., "Multi-modal Vision Pre-training for Medical Image Analysis", CVPR 2025) fills the
masked blocks of one pre-training view with a learnable template of the target modality, taken at the
same physical location as the crop. The templates start at zero, learn only through those fills, and are
exported after pre-training as one NIfTI per modality (the "distilled modality templates"), which
downstream fine-tuning uses frozen for template augmentation and missing-modality imputation.

Locations are physical: a crop is described by its voxel-to-world affine (MONAI ``MetaTensor`` batches carry
it as ``batch["image"].affine``, shape ``(B, 4, 4)``, after every spatial transform including crops), and the
template is sampled trilinearly at the world positions of the crop's voxel centres. Any spacing or
orientation works, oblique included, because only affines are composed.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE, BRATS_ATLAS_SHAPE
from brainmvp_components.data.modalities import (
    CANONICAL_MODALITIES,
    UnknownModalityError,
    canonical_modalities,
    canonical_modality,
    strip_nifti_suffix,
)
from brainmvp_components.utils.writers import atomic_write

__all__ = ["ModalityTemplates"]

logger = logging.getLogger(__name__)

MONTAGE_NAME = "templates.png"


def _plain(value) -> torch.Tensor:
    """A plain float64 CPU tensor from a tensor, ``MetaTensor`` or array (metadata dropped)."""
    if isinstance(value, torch.Tensor):
        value = torch.Tensor.as_subclass(value.detach(), torch.Tensor)
    return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).to(
        device="cpu", dtype=torch.float64
    )


class ModalityTemplates(nn.Module):
    """Learnable per-modality templates on an atlas grid.

    Args:
        modalities: names of the templates (any alias; stored canonical), default all of
            :data:`~brainmvp_components.data.modalities.CANONICAL_MODALITIES`.
        spatial_shape: template grid shape ``(H, W, D)``, default the BraTS/SRI24 atlas (240, 240, 155).
        affine: 4 x 4 voxel-to-world affine of the template grid, default the BraTS atlas affine.
        eps: range below which a crop counts as constant in the min-max normalisation.

    Attributes:
        weight: ``Parameter (M, H, W, D)``, zero-initialised, one volume per modality.
        affine: ``float64`` buffer ``(4, 4)``.
        modalities: tuple of canonical names, row ``m`` of ``weight`` is ``modalities[m]``.
    """

    def __init__(
        self,
        modalities: Sequence[str] | None = None,
        spatial_shape: Sequence[int] = BRATS_ATLAS_SHAPE,
        affine: np.ndarray | torch.Tensor = BRATS_ATLAS_AFFINE,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.modalities: tuple[str, ...] = tuple(
            canonical_modalities(CANONICAL_MODALITIES if modalities is None else modalities)
        )
        if not self.modalities:
            raise ValueError("ModalityTemplates needs at least one modality")
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) != 3 or any(s < 2 for s in shape):
            raise ValueError(f"spatial_shape must be three sides of at least 2 voxels, got {tuple(spatial_shape)}")
        self.spatial_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        affine_t = _plain(affine)
        if affine_t.shape != (4, 4):
            raise ValueError(f"affine must be 4 x 4, got shape {tuple(affine_t.shape)}")
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.zeros(len(self.modalities), *shape))
        self.register_buffer("affine", affine_t)
        # canonical-table index -> row of weight (-1: no template for that modality)
        table = torch.full((len(CANONICAL_MODALITIES),), -1, dtype=torch.long)
        for row, name in enumerate(self.modalities):
            table[CANONICAL_MODALITIES.index(name)] = row
        self.register_buffer("_canonical_to_row", table, persistent=False)

    def extra_repr(self) -> str:
        return f"modalities={self.modalities}, spatial_shape={self.spatial_shape}"

    # ------------------------------------------------------------------ indices
    def indices_for(self, modalities: Sequence[str] | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Rows of :attr:`weight` for modality names (any alias) or canonical-table indices.

        ``modalities`` may be names (``["t1ce", "flair"]``) or integer indices into
        :data:`~brainmvp_components.data.modalities.CANONICAL_MODALITIES` (e.g. a batch's ``modality_index``), of
        any shape. Returns a ``LongTensor`` of the same shape on the templates' device.

        Raises:
            UnknownModalityError: a name is unknown or has no template here.
        """
        device = self.weight.device
        if isinstance(modalities, torch.Tensor) or (
            len(modalities) > 0 and not isinstance(next(iter(modalities)), str)
        ):
            canonical = torch.as_tensor(_plain(modalities), dtype=torch.long)
            if canonical.numel() and (canonical.min() < 0 or canonical.max() >= len(CANONICAL_MODALITIES)):
                raise UnknownModalityError(
                    f"canonical modality indices must lie in [0, {len(CANONICAL_MODALITIES)}), got {canonical.tolist()}"
                )
            rows = self._canonical_to_row.cpu()[canonical]
            if (rows < 0).any():
                missing = sorted({CANONICAL_MODALITIES[i] for i in canonical[rows < 0].tolist()})
                raise UnknownModalityError(f"no template for modalities {missing}; templates: {self.modalities}")
            return rows.to(device)
        names = [canonical_modality(m) for m in modalities]
        missing = sorted({m for m in names if m not in self.modalities})
        if missing:
            raise UnknownModalityError(f"no template for modalities {missing}; templates: {self.modalities}")
        return torch.tensor([self.modalities.index(m) for m in names], dtype=torch.long, device=device)

    # ------------------------------------------------------------------ sampling
    def crop(
        self,
        index: torch.Tensor,
        affine: torch.Tensor | np.ndarray,
        roi_shape: Sequence[int],
        normalize: bool = True,
    ) -> torch.Tensor:
        """Templates sampled on the voxel grids of a batch of crops.

        Sample ``b`` is the template ``weight[index[b]]`` sampled trilinearly (zeros outside the template) at the
        world positions ``affine[b] @ (i, j, k, 1)`` of the voxels ``(i, j, k)`` of a ``roi_shape`` grid.
        Differentiable with respect to :attr:`weight`; only the sampled rows receive gradients.

        Args:
            index: ``LongTensor (B,)`` of rows of :attr:`weight` (see :meth:`indices_for`).
            affine: voxel-to-world affines of the crops, ``(B, 4, 4)`` or one ``(4, 4)`` for all samples. With
                MONAI, pass the collated ``batch["image"].affine``.
            roi_shape: crop shape ``(H, W, D)``.
            normalize: min-max normalise each sample to [0, 1] (a constant crop, such as one of the
                zero-initialised template, becomes zeros). ``False`` returns the raw interpolated values.
                For a constant crop the range is clamped to ``eps``, so its gradient reaches the template scaled
                by ``1 / eps``: that is what moves a zero-initialised template at all. Scale-invariant optimisers
                (AdamW) absorb it; do not clip one global gradient norm over templates and network together.

        Returns:
            ``(B, 1, H, W, D)`` tensor in the dtype and on the device of :attr:`weight`.
        """
        index = torch.as_tensor(torch.Tensor.as_subclass(torch.as_tensor(index), torch.Tensor), dtype=torch.long)
        if index.ndim != 1:
            raise ValueError(f"index must have shape (B,), got {tuple(index.shape)}")
        batch = index.shape[0]
        roi = tuple(int(s) for s in roi_shape)
        if len(roi) != 3 or any(s < 1 for s in roi):
            raise ValueError(f"roi_shape must be three positive sides, got {tuple(roi_shape)}")
        affines = _plain(affine)
        if affines.shape == (4, 4):
            affines = affines.expand(batch, 4, 4)
        if affines.shape != (batch, 4, 4):
            raise ValueError(f"affine must be (4, 4) or (B, 4, 4) with B = {batch}, got {tuple(affines.shape)}")
        if batch and (index.min() < 0 or index.max() >= len(self.modalities)):
            raise ValueError(f"index values must lie in [0, {len(self.modalities)}), got {index.tolist()}")

        device = self.weight.device
        size = torch.tensor(self.spatial_shape, dtype=torch.float64)
        # crop voxel -> template voxel, float64 on the CPU (tiny)
        to_template = torch.linalg.inv(self.affine.to("cpu", torch.float64)) @ affines  # (B, 4, 4)
        # the map is affine, so the 8 ROI corners bound the sampled region
        corners = torch.cartesian_prod(*[torch.tensor([0.0, s - 1.0], dtype=torch.float64) for s in roi])
        corners = torch.cat([corners, torch.ones(8, 1, dtype=torch.float64)], dim=1)  # (8, 4)
        spots = (to_template[:, :3] @ corners.T).transpose(1, 2)  # (B, 8, 3)
        # box of template voxels holding every in-volume neighbour of every sample point
        low = spots.amin(dim=1).floor().clamp(min=torch.zeros(3, dtype=torch.float64), max=size - 1)
        high = (spots.amax(dim=1).floor() + 1).clamp(min=torch.zeros(3, dtype=torch.float64), max=size - 1)
        length = (high - low + 1).clamp(min=2).amax(dim=0)
        length = torch.minimum(length, size)
        start = torch.minimum(low, size - length)  # (B, 3), the box stays inside the template
        length_int = [int(v) for v in length.tolist()]

        # gather only the box of each sample's template: (B, Li, Lj, Lk)
        start_d = start.to(device=device, dtype=torch.long)
        ii, jj, kk = (torch.arange(n, device=device) for n in length_int)
        box = self.weight[
            index.to(device)[:, None, None, None],
            (start_d[:, 0, None] + ii)[:, :, None, None],
            (start_d[:, 1, None] + jj)[:, None, :, None],
            (start_d[:, 2, None] + kk)[:, None, None, :],
        ]

        # sample positions in box voxels, then grid_sample's normalised (x, y, z) = (k, j, i) with align_corners
        linear = to_template[:, :3, :3].to(device=device, dtype=torch.float32)  # (B, 3, 3)
        offset = (to_template[:, :3, 3] - start).to(device=device, dtype=torch.float32)  # (B, 3)
        axes = [torch.arange(n, device=device, dtype=torch.float32) for n in roi]
        position = (
            linear[:, None, None, None, :, 0] * axes[0][None, :, None, None, None]
            + linear[:, None, None, None, :, 1] * axes[1][None, None, :, None, None]
            + linear[:, None, None, None, :, 2] * axes[2][None, None, None, :, None]
            + offset[:, None, None, None, :]
        )  # (B, H, W, D, 3) in template (i, j, k) order
        scale = 2.0 / (torch.tensor(length_int, device=device, dtype=torch.float32) - 1.0)
        grid = (position * scale - 1.0).flip(-1)
        sampled = F.grid_sample(
            box.unsqueeze(1), grid.to(box.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return self._min_max(sampled) if normalize else sampled

    def _min_max(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample min-max normalisation of ``(B, C, ...)`` to [0, 1]; constant samples become zeros."""
        dims = tuple(range(1, x.ndim))
        low = x.amin(dim=dims, keepdim=True)
        span = x.amax(dim=dims, keepdim=True) - low
        return (x - low) / span.clamp(min=self.eps)

    @torch.no_grad()
    def intensity_window(self) -> torch.Tensor:
        """Each template's intensity window for frozen use: ``(M, 2)``, its 5th and 95th percentiles.

        Percentiles are taken over the template's non-zero voxels (all voxels when none is zero): distilled
        templates start at zero and voxels that no masked block ever covered stay exactly zero, so they are
        background rather than anatomy. Cached until the templates change.
        """
        key = (self.weight.data_ptr(), self.weight._version)
        cached = getattr(self, "_window_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        rows = []
        for volume in self.weight.detach().to("cpu", torch.float32).numpy():
            values = volume[volume != 0] if np.any(volume != 0) else volume.ravel()
            rows.append(np.percentile(values, [5.0, 95.0]))
        window = torch.as_tensor(np.stack(rows), dtype=torch.float32)
        self._window_cache = (key, window)
        return window

    @torch.no_grad()
    def resample_rows(
        self, rows: torch.Tensor, affine: torch.Tensor | np.ndarray, shape: Sequence[int]
    ) -> torch.Tensor:
        """Templates of weight ``rows`` on one image grid, in the images' intensity convention: ``(R, *shape)``.

        Each template is scaled by its fixed :meth:`intensity_window` to [0, 1] and clipped, as the bundles scale
        images (5th/95th percentiles to [0, 1], clipped), so one voxel of anatomy has the same value in every crop.
        Per-crop min-max (pre-training's fill) would stretch a crop of mostly background into full contrast.
        """
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        sampled = self.crop(rows, affine, shape, normalize=False)[:, 0]
        window = self.intensity_window()[rows].to(sampled)
        low = window[:, 0].reshape(-1, *([1] * (sampled.ndim - 1)))
        span = (window[:, 1] - window[:, 0]).reshape(low.shape).clamp(min=self.eps)
        return ((sampled - low) / span).clamp(0.0, 1.0)

    @torch.no_grad()
    def resample_modalities(
        self, modalities: Sequence[str], affine: torch.Tensor | np.ndarray, shape: Sequence[int]
    ) -> torch.Tensor:
        """Templates of ``modalities`` on one image grid, ``(len(modalities), *shape)``, in [0, 1].

        For frozen use downstream (template channel replacement, missing-modality imputation): ``affine`` is
        the image's ``(4, 4)`` voxel-to-world affine and ``shape`` its spatial shape. Intensities are scaled as
        :meth:`resample_rows` describes. No gradients.
        """
        return self.resample_rows(self.indices_for(list(modalities)), affine, shape)

    @torch.no_grad()
    def resample_to_grid(self, modality: str, affine: torch.Tensor | np.ndarray, shape: Sequence[int]) -> torch.Tensor:
        """The template of ``modality`` on the grid ``(affine, shape)``: ``(1, *shape)`` in [0, 1], no gradients."""
        return self.resample_modalities([modality], affine, shape)

    # ------------------------------------------------------------------ use downstream
    def freeze(self) -> ModalityTemplates:
        """Stop gradients to the templates and switch to eval mode (for downstream use); returns ``self``."""
        self.requires_grad_(False)
        return self.eval()

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The templates as ``{modality: float32 array (H, W, D)}``."""
        weight = self.weight.detach().to("cpu", torch.float32).numpy()
        return {name: weight[row] for row, name in enumerate(self.modalities)}

    # ------------------------------------------------------------------ files
    def export_nifti(self, out_dir: str | os.PathLike, prefix: str = "template_", montage: bool = True) -> list[Path]:
        """Write one NIfTI per modality, ``<prefix><modality>.nii.gz`` (float32, with :attr:`affine`).

        Each file is written to a temporary name and moved into place, so readers never see a partial file.
        With ``montage=True`` a PNG preview ``templates.png`` is written next to them when
        ``brainmvp_components.visualize.previews`` is available (skipped with a warning otherwise).

        Returns:
            The NIfTI paths, in the order of :attr:`modalities`.
        """
        import nibabel as nib

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        affine = self.affine.detach().to("cpu", torch.float64).numpy()
        arrays = self.as_arrays()
        paths = []
        for name, array in arrays.items():
            path = out / f"{prefix}{name}.nii.gz"
            image = nib.Nifti1Image(np.ascontiguousarray(array, dtype=np.float32), affine)
            image.header.set_data_dtype(np.float32)
            paths.append(atomic_write(path, partial(nib.save, image), suffix=".nii.gz"))
        if montage:
            try:
                from brainmvp_components.visualize.previews import save_template_montage
            except ImportError as err:
                warnings.warn(f"template montage skipped: {err}", stacklevel=2)
            else:
                save_template_montage(arrays, out / MONTAGE_NAME)
        logger.info("wrote %d templates to %s", len(paths), out)
        return paths

    @classmethod
    def from_nifti_dir(
        cls, directory: str | os.PathLike, modalities: Sequence[str] | None = None, prefix: str = "template_"
    ) -> ModalityTemplates:
        """Load templates written by :meth:`export_nifti`.

        Args:
            directory: folder holding ``<prefix><modality>.nii[.gz]`` files.
            modalities: which templates to load, in this order (any alias); default every template file found,
                in canonical order.
            prefix: file-name prefix.

        Raises:
            FileNotFoundError: the folder holds no template files, or a requested modality has none.
            ValueError: a file names an unknown modality, is not 3-D, or lies on a different grid than the first.
        """
        import nibabel as nib

        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"template folder {folder} does not exist")
        found: dict[str, Path] = {}
        for path in sorted(folder.glob(f"{prefix}*.nii*")):
            if path.name.startswith("."):
                continue
            token = strip_nifti_suffix(path)[len(prefix) :]
            try:
                name = canonical_modality(token)
            except UnknownModalityError as err:
                raise ValueError(f"template file {path} does not name a known modality: {err}") from err
            if name in found:
                raise ValueError(f"template files {found[name]} and {path} both hold modality {name!r}")
            found[name] = path
        if not found:
            raise FileNotFoundError(f"no template files {prefix}<modality>.nii.gz in {folder}")
        if modalities is None:
            names = [m for m in CANONICAL_MODALITIES if m in found]
        else:
            names = canonical_modalities(modalities)
            missing = [m for m in names if m not in found]
            if missing:
                raise FileNotFoundError(
                    f"no template file for {missing} in {folder} (expected {prefix}<modality>.nii.gz; "
                    f"found {sorted(found)})"
                )
        volumes, affine, shape = [], None, None
        for name in names:
            image = nib.load(str(found[name]))
            data = np.asarray(image.dataobj, dtype=np.float32)
            if data.ndim == 4 and data.shape[3] == 1:
                data = data[..., 0]
            if data.ndim != 3:
                raise ValueError(f"template file {found[name]} must hold a 3-D volume, got shape {data.shape}")
            if affine is None:
                affine, shape = image.affine, data.shape
            elif data.shape != shape or not np.allclose(image.affine, affine, atol=1e-4):
                raise ValueError(
                    f"template file {found[name]} is on a different grid (shape {data.shape}) than "
                    f"{found[names[0]]} (shape {shape}); all templates must share one grid"
                )
            volumes.append(data)
        templates = cls(names, spatial_shape=shape, affine=affine)
        with torch.no_grad():
            templates.weight.copy_(torch.from_numpy(np.stack(volumes)))
        return templates
