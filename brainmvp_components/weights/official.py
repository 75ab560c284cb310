"""The authors' published checkpoints: reading, structure checks and conversion to this project's formats.

Three file formats meet here:

- the authors' release ``BrainMVP_uniformer.pt``: ``{"state_dict": ..., "optimizer": ..., "scheduler": ...,
  "current_epoch": ..., "val_best": ...}`` (or a bare state dict), keys possibly prefixed ``module.``;
  ``encoder.uniformer.*`` (UniFormer-S), ``decoder.*`` and ``rep_template`` (the distilled templates,
  ``(8, 240, 240, 155)`` in the order :data:`~brainmvp_components.data.modalities.OFFICIAL_TEMPLATE_ORDER`);
- the authors' ``BrainMVP_unet.pt``, wrapped the same way: the UNet variant's modules at the top level
  (``conv1a.*`` ... ``conv4d.*``, ``up4conva.*`` ... ``up1conv.*``) and ``rep_template``; it maps onto
  :class:`~brainmvp_components.networks.resunet.ResUNet` by prefixing ``encoder.`` / ``decoder.``;
- ``encoder.pt``: a plain state dict of :class:`~brainmvp_components.networks.uniformer.UniFormer3D`, the
  format the downstream bundles load;
- ``model.pt``: a plain state dict of :class:`~brainmvp_components.networks.pretrain.BrainMVPPretrainModel`
  (what the pre-training bundle writes).

All files are read with ``torch.load(..., weights_only=True)``: no code in a checkpoint is executed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from brainmvp_components.data.atlas import BRATS_ATLAS_AFFINE, BRATS_ATLAS_SHAPE
from brainmvp_components.data.modalities import CANONICAL_MODALITIES, OFFICIAL_TEMPLATE_ORDER
from brainmvp_components.networks.pretrain import BrainMVPPretrainModel, PretrainDecoder
from brainmvp_components.networks.resunet import ResUNet, ResUNetDecoder, ResUNetEncoder
from brainmvp_components.networks.uniformer import UniFormer3D
from brainmvp_components.utils.writers import atomic_torch_save

__all__ = [
    "CheckpointFormatError",
    "OFFICIAL_UNUSED_KEYS",
    "read_state_dict",
    "official_to_model_state_dict",
    "load_official_checkpoint",
    "convert_official_checkpoint",
    "template_grid_affine",
    "official_state_dict_shapes",
    "check_official_structure",
    "prepare_official_checkpoint",
    "official_checkpoint_variant",
    "official_unet_state_dict_shapes",
    "official_unet_to_network_state_dict",
    "load_official_unet_checkpoint",
]

logger = logging.getLogger(__name__)

OFFICIAL_ENCODER_PREFIX = "encoder.uniformer."
OFFICIAL_TEMPLATE_KEY = "rep_template"
OFFICIAL_UNUSED_KEYS = re.compile(r"^decoder\.(decoder[2-5]\.conv_block\.|proj1\.)")
"""Keys of the authors' pre-training state dict that their pre-training forward never uses (the
``UnetrUpBlock`` convolution blocks and the input projection of a skip decoder that is not run). They carry
initial values only; :func:`load_official_checkpoint` skips them."""

OFFICIAL_UNET_ENCODER_MODULES = tuple(name for name, _ in ResUNetEncoder(init_channels=8).named_children())
"""Top-level modules of the authors' UNet checkpoint that belong to the encoder (``conv1a`` ... ``conv4d``)."""
OFFICIAL_UNET_DECODER_MODULES = tuple(
    name
    for name, module in ResUNetDecoder(init_channels=8).named_children()
    if next(module.parameters(), None) is not None
)
"""Top-level modules of the authors' UNet checkpoint that belong to the decoder (``up4conva`` ... ``up1conv``)."""
UNET_MARKERS = ("conv1a.weight", "up1conv.weight")

_CONTAINER_KEYS = ("state_dict", "model", "network", "net")


class CheckpointFormatError(ValueError):
    """A weights file is unreadable, or is not in the format the caller asked for; the message names the file."""


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def read_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``: a bare state dict, or a training checkpoint holding one under
    ``state_dict`` / ``model`` / ``network`` / ``net``. ``module.`` prefixes (DDP) are removed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointFormatError: the file cannot be read with ``weights_only=True`` or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise CheckpointFormatError(f"{path}: cannot be read as a PyTorch weights file (weights_only): {err}") from err
    if isinstance(obj, Mapping):
        for name in _CONTAINER_KEYS:
            if isinstance(obj.get(name), Mapping):
                obj = obj[name]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointFormatError(
            f"{path}: holds no state dict (expected a mapping of names to tensors, "
            f"optionally under one of {list(_CONTAINER_KEYS)})"
        )
    return {_strip_module(str(k)): v for k, v in obj.items()}


def template_grid_affine(shape: Sequence[int]) -> np.ndarray:
    """Affine of a template grid of ``shape`` covering the BraTS atlas field of view.

    ``BRATS_ATLAS_AFFINE`` itself for 240 x 240 x 155; otherwise the atlas box resampled to ``shape``
    (spacing ``atlas_side / side`` mm per axis, the same outer edges). Used for templates whose grid the
    checkpoint does not record.
    """
    shape = tuple(int(s) for s in shape)
    if shape == tuple(BRATS_ATLAS_SHAPE):
        return BRATS_ATLAS_AFFINE.copy()
    scale = np.array(BRATS_ATLAS_SHAPE, dtype=float) / np.array(shape, dtype=float)
    voxel_to_atlas_voxel = np.eye(4)
    voxel_to_atlas_voxel[:3, :3] = np.diag(scale)
    voxel_to_atlas_voxel[:3, 3] = (scale - 1.0) / 2.0
    return BRATS_ATLAS_AFFINE @ voxel_to_atlas_voxel


def _infer_uniformer_config(encoder_state: Mapping[str, torch.Tensor], source: str) -> dict:
    try:
        dims = [int(encoder_state[f"patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5)]
        in_channels = int(encoder_state["patch_embed1.proj.weight"].shape[1])
        depths = []
        for stage in range(1, 5):
            indices = {int(k.split(".")[1]) for k in encoder_state if k.startswith(f"blocks{stage}.")}
            if not indices:
                raise KeyError(f"blocks{stage}.*")
            depths.append(max(indices) + 1)
        mlp_ratio = encoder_state["blocks1.0.mlp.fc1.weight"].shape[0] / dims[0]
    except KeyError as err:
        raise CheckpointFormatError(f"{source}: incomplete UniFormer encoder weights, no {err}") from err
    return {
        "in_channels": in_channels,
        "dims": tuple(dims),
        "depths": tuple(depths),
        "mlp_ratio": float(mlp_ratio),
        "qkv_bias": "blocks3.0.attn.qkv.bias" in encoder_state,
    }


def _official_template_modalities(count: int, source: str) -> tuple[tuple[str, ...], list[int]]:
    """Canonical-order modality names of ``count`` official templates and, per name, its official row."""
    if not 1 <= count <= len(OFFICIAL_TEMPLATE_ORDER):
        raise CheckpointFormatError(
            f"{source}: rep_template holds {count} templates; the authors' order has {len(OFFICIAL_TEMPLATE_ORDER)}"
        )
    present = OFFICIAL_TEMPLATE_ORDER[:count]
    modalities = tuple(m for m in CANONICAL_MODALITIES if m in present)
    return modalities, [present.index(m) for m in modalities]


def official_to_model_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], tuple[str, ...], list[str]]:
    """Map the authors' pre-training state dict onto :class:`BrainMVPPretrainModel` key names.

    ``encoder.uniformer.X -> encoder.X``; ``decoder.decoderN.transp_conv.*`` and ``decoder.out_1.*`` keep
    their names; ``rep_template`` becomes ``templates.weight`` with its rows reordered from the authors'
    order to canonical order. Keys matching :data:`OFFICIAL_UNUSED_KEYS` are skipped.

    Returns:
        ``(mapped state dict, template modalities in canonical order, skipped keys)``.

    Raises:
        CheckpointFormatError: not a BrainMVP UniFormer pre-training state dict, or it has unknown keys.
    """
    if OFFICIAL_TEMPLATE_KEY not in state or f"{OFFICIAL_ENCODER_PREFIX}patch_embed1.proj.weight" not in state:
        sample = ", ".join(list(state)[:5])
        raise CheckpointFormatError(
            f"{source}: not a BrainMVP UniFormer pre-training checkpoint (no '{OFFICIAL_TEMPLATE_KEY}' and "
            f"'{OFFICIAL_ENCODER_PREFIX}*' keys; first keys: {sample}). The authors' BrainMVP_unet.pt loads with "
            "load_official_unet_checkpoint, and convert_official_checkpoint converts either."
        )
    template = state[OFFICIAL_TEMPLATE_KEY]
    if template.ndim != 4:
        raise CheckpointFormatError(f"{source}: rep_template should be (M, H, W, D), got {tuple(template.shape)}")
    modalities, rows = _official_template_modalities(int(template.shape[0]), source)
    mapped: dict[str, torch.Tensor] = {"templates.weight": template[rows].clone()}
    skipped, unknown = [], []
    for key, value in state.items():
        if key == OFFICIAL_TEMPLATE_KEY:
            continue
        if key.startswith(OFFICIAL_ENCODER_PREFIX):
            mapped["encoder." + key[len(OFFICIAL_ENCODER_PREFIX) :]] = value
        elif re.match(r"^decoder\.(decoder[2-5]\.transp_conv\.|out_1\.)", key):
            mapped[key] = value
        elif OFFICIAL_UNUSED_KEYS.match(key):
            skipped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointFormatError(f"{source}: unexpected keys for a BrainMVP pre-training checkpoint: {unknown}")
    return mapped, modalities, skipped


def load_official_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", head_dim: int = 64
) -> BrainMVPPretrainModel:
    """Build a :class:`BrainMVPPretrainModel` holding the authors' published pre-training weights.

    The encoder's size (input channels, stage widths, depths, MLP ratio) and the templates' number and
    grid are read from the file; templates are reordered to canonical order (their ``modalities`` attribute
    names each row) and placed on the BraTS atlas grid (see :func:`template_grid_affine` for other grids).
    Every parameter and buffer of the model is loaded except the templates' affine; the file's
    :data:`OFFICIAL_UNUSED_KEYS` are skipped (logged at debug level). The model is returned in training
    mode, like any freshly built module; call ``.eval()`` for inference.

    Args:
        path: the authors' checkpoint (``BrainMVP_uniformer.pt``), either wrapped as released or a bare state dict.
        map_location: passed to ``torch.load``.
        head_dim: channels per attention head (not recorded in the weights; the authors use 64).

    Raises:
        FileNotFoundError: no such file.
        CheckpointFormatError: not a BrainMVP UniFormer pre-training checkpoint, or keys/shapes do not fit.
    """
    return _official_model_from_state(read_state_dict(path, map_location), str(path), head_dim)


def _official_model_from_state(
    state: Mapping[str, torch.Tensor], source: str, head_dim: int = 64
) -> BrainMVPPretrainModel:
    """:func:`load_official_checkpoint` on a state dict already read from ``source``."""
    from brainmvp_components.networks.templates import ModalityTemplates

    mapped, modalities, skipped = official_to_model_state_dict(state, source)
    encoder_state = {k[len("encoder.") :]: v for k, v in mapped.items() if k.startswith("encoder.")}
    config = _infer_uniformer_config(encoder_state, source)
    try:
        encoder = UniFormer3D(head_dim=head_dim, **config)
    except ValueError as err:
        message = f"{source}: cannot build its encoder ({config}, head_dim={head_dim}): {err}"
        raise CheckpointFormatError(message) from err
    out_weight = mapped.get("decoder.out_1.conv.conv.weight")
    decoder = PretrainDecoder(encoder.out_channels, out_channels=1 if out_weight is None else int(out_weight.shape[0]))
    shape = tuple(int(s) for s in mapped["templates.weight"].shape[1:])
    templates = ModalityTemplates(modalities=modalities, spatial_shape=shape, affine=template_grid_affine(shape))
    model = BrainMVPPretrainModel(encoder, decoder, templates)

    expected = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in mapped.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    unexpected = sorted(k for k in mapped if k not in expected)
    missing = sorted(k for k in expected if k not in mapped and not k.startswith("templates."))
    if mismatched or unexpected or missing:
        raise CheckpointFormatError(
            f"{source}: does not fit BrainMVPPretrainModel; shape mismatches: {mismatched}; "
            f"unexpected keys: {unexpected}; missing keys: {missing}"
        )
    model.load_state_dict({**expected, **mapped}, strict=True)
    logger.info(
        "loaded BrainMVP checkpoint %s: encoder %s, templates %s %s; skipped %d unused keys",
        source,
        config,
        modalities,
        shape,
        len(skipped),
    )
    logger.debug("skipped keys (unused in pre-training): %s", skipped)
    return model


def official_checkpoint_variant(state: Mapping[str, torch.Tensor]) -> str:
    """Which of the authors' pre-training checkpoints ``state`` (``module.`` prefixes removed) is.

    ``"unet"`` when it has no ``encoder.uniformer.*`` key and some key of the UNet variant's modules
    (:data:`OFFICIAL_UNET_ENCODER_MODULES`, :data:`OFFICIAL_UNET_DECODER_MODULES`) at the top level; otherwise
    ``"uniformer"``, whose checks then name what a foreign file lacks.
    """
    if any(k.startswith(OFFICIAL_ENCODER_PREFIX) for k in state):
        return "uniformer"
    unet_modules = set(OFFICIAL_UNET_ENCODER_MODULES) | set(OFFICIAL_UNET_DECODER_MODULES)
    return "unet" if any(k.split(".", 1)[0] in unet_modules for k in state) else "uniformer"


def official_unet_to_network_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Map the authors' UNet pre-training state dict onto :class:`~brainmvp_components.networks.resunet.ResUNet`.

    The key map is a prefix per top-level module: ``conv1a.* ... conv4d.*`` (and ``ds1..3``) become
    ``encoder.*``, ``up4conva.* ... up1conv.*`` become ``decoder.*``; every name below stays.

    Returns:
        ``(mapped, other)``: the mapped weights, and the file's remaining entries under their own names
        (``rep_template``, or keys of no known module).
    """
    mapped: dict[str, torch.Tensor] = {}
    other: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module = key.split(".", 1)[0]
        if module in OFFICIAL_UNET_ENCODER_MODULES:
            mapped["encoder." + key] = value
        elif module in OFFICIAL_UNET_DECODER_MODULES:
            mapped["decoder." + key] = value
        else:
            other[key] = value
    return mapped, other


def official_unet_state_dict_shapes(init_channels: int = 32, in_channels: int = 1) -> dict[str, tuple[int, ...]]:
    """Keys and shapes that the authors' UNet pre-training checkpoint must hold (``rep_template`` aside).

    Derived from this project's pre-training :class:`~brainmvp_components.networks.resunet.ResUNet` under the
    authors' key names; the test suite checks them against the key list derived from the authors' code
    (``tests/data/official_brainmvp/official_unet_pretrain_state_dict_shapes.json``).
    """
    network = ResUNet(in_channels, 1, init_channels, deep_supervision=False, skip_connections=False)
    return {k.split(".", 1)[1]: tuple(v.shape) for k, v in network.state_dict().items()}


def _official_templates(template: torch.Tensor, source: str):
    """The authors' ``rep_template`` ``(M, H, W, D)`` as :class:`ModalityTemplates` in canonical order."""
    from brainmvp_components.networks.templates import ModalityTemplates

    if template.ndim != 4:
        raise CheckpointFormatError(f"{source}: rep_template should be (M, H, W, D), got {tuple(template.shape)}")
    modalities, rows = _official_template_modalities(int(template.shape[0]), source)
    shape = tuple(int(s) for s in template.shape[1:])
    templates = ModalityTemplates(modalities=modalities, spatial_shape=shape, affine=template_grid_affine(shape))
    with torch.no_grad():
        templates.weight.copy_(template[rows])
    return templates


def _official_unet_from_state(state: Mapping[str, torch.Tensor], source: str):
    """:func:`load_official_unet_checkpoint` on a state dict already read from ``source``."""
    if official_checkpoint_variant(state) != "unet":
        raise CheckpointFormatError(
            f"{source}: not the authors' UNet variant (it has no top-level conv1a/up1conv modules); the UniFormer "
            "checkpoint loads with load_official_checkpoint"
        )
    mapped, other = official_unet_to_network_state_dict(state)
    template = other.pop(OFFICIAL_TEMPLATE_KEY, None)
    stem, head = mapped.get("encoder.conv1a.weight"), mapped.get("decoder.up1conv.weight")
    if stem is None or head is None or stem.ndim != 5 or head.ndim != 5:
        first = "conv1a.weight" if stem is None or stem.ndim != 5 else "up1conv.weight"
        raise CheckpointFormatError(f"{source}: incomplete UNet checkpoint, first mismatching key {first!r}")
    try:
        network = ResUNet(
            in_channels=int(stem.shape[1]),
            out_channels=int(head.shape[0]),
            init_channels=int(stem.shape[0]),
            deep_supervision=False,
            skip_connections=False,
        )
    except ValueError as err:
        raise CheckpointFormatError(f"{source}: cannot build its UNet ({tuple(stem.shape)} stem): {err}") from err
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    problem = _structure_problems(expected, {**mapped, **other}, allowed=lambda k: False)
    if problem:
        raise CheckpointFormatError(
            f"{source}: does not fit the UNet variant ({network.in_channels} input channels, "
            f"width {stem.shape[0]}): {problem}"
        )
    network.load_state_dict(mapped, strict=True)
    templates = None if template is None else _official_templates(template, source)
    return network, templates


def load_official_unet_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Build the authors' UNet pre-training network from their ``BrainMVP_unet.pt``.

    The network is :class:`~brainmvp_components.networks.resunet.ResUNet` with ``skip_connections=False`` and no
    deep-supervision heads, sized from the file (input channels, width, output channels): its forward is the
    authors' pre-training reconstruction, ``(B, 1, H, W, D) -> (B, 1, H, W, D)``, and ``network.encoder``
    returns their features (``c4``, ``(B, 8C, H/8, W/8, D/8)``, the deepest). Every weight is loaded strictly.
    ``rep_template``, when present, becomes :class:`~brainmvp_components.networks.templates.ModalityTemplates` in
    canonical
    order on the atlas grid, as for the UniFormer checkpoint.

    Returns:
        ``(network, templates or None)``, the network in training mode (call ``.eval()`` for inference).

    Raises:
        FileNotFoundError: no such file.
        CheckpointFormatError: not the UNet variant, or keys/shapes do not fit; the message names the file and the
            first mismatching key.
    """
    return _official_unet_from_state(read_state_dict(path, map_location), str(path))


def _structure_problems(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor], allowed) -> str:
    """Missing, mis-shaped and unexpected keys of ``state`` against ``expected`` (``allowed(key)`` exempts extra
    keys), led by the first mismatching key in ``expected``'s order; empty when it fits."""
    missing = [k for k in expected if k not in state]
    mismatched = [
        f"{k}: {tuple(state[k].shape)} instead of {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    unexpected = sorted(k for k in state if k not in expected and not allowed(k))
    if not (missing or mismatched or unexpected):
        return ""
    first = next((k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k])), None)
    first = first if first is not None else unexpected[0]
    return (
        f"first mismatching key {first!r}; missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
        f"wrong shapes {mismatched[:10]}; unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
    )


def convert_official_checkpoint(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    head_dim: int = 64,
) -> dict[str, Path]:
    """Convert the authors' checkpoint (either variant, told apart by its keys) into this project's files.

    Writes, each atomically, into ``out_dir``:

    - ``encoder.pt``: plain state dict of :class:`UniFormer3D` (``BrainMVP_uniformer.pt``) or of
      :class:`~brainmvp_components.networks.resunet.ResUNetEncoder` (``BrainMVP_unet.pt``), what downstream
      bundles load with :func:`load_pretrained_encoder`;
    - ``model.pt``: plain state dict of :class:`BrainMVPPretrainModel` (UniFormer; for continued pre-training), or
      of the pre-training :class:`~brainmvp_components.networks.resunet.ResUNet` (UNet: encoder and
      reconstruction decoder, no templates; see :func:`load_official_unet_checkpoint`);
    - ``templates/template_<modality>.nii.gz``: one NIfTI per distilled template, on the atlas grid (when the
      file holds ``rep_template``).

    Returns:
        ``{"encoder": path, "model": path, "template_<modality>": path, ...}``.
    """
    source = str(path)
    state = read_state_dict(path, map_location)
    out = Path(out_dir)
    if official_checkpoint_variant(state) == "unet":
        network, templates = _official_unet_from_state(state, source)
        out.mkdir(parents=True, exist_ok=True)
        written = {
            "encoder": atomic_torch_save(network.encoder.state_dict(), out / "encoder.pt"),
            "model": atomic_torch_save(network.state_dict(), out / "model.pt"),
        }
        if templates is not None:
            paths = templates.export_nifti(out / "templates")
            written.update({f"template_{m}": Path(p) for m, p in zip(templates.modalities, paths)})
        logger.info("converted %s (UNet variant) into %s", path, out)
        return written
    model = _official_model_from_state(state, source, head_dim)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "encoder": atomic_torch_save(model.encoder.state_dict(), out / "encoder.pt"),
        "model": atomic_torch_save(model.state_dict(), out / "model.pt"),
    }
    template_paths = model.templates.export_nifti(out / "templates")
    for modality, template_path in zip(model.templates.modalities, template_paths):
        written[f"template_{modality}"] = Path(template_path)
    logger.info("converted %s into %s", path, out)
    return written


OFFICIAL_TEMPLATE_ROWS = len(OFFICIAL_TEMPLATE_ORDER)
CONVERTED_SUFFIX = "_converted"
"""The conversion of an official checkpoint ``X.pt`` lives in ``X_converted/`` beside it."""


def official_state_dict_shapes(preset: str = "small") -> dict[str, tuple[int, ...]]:
    """Keys and shapes that the authors' UniFormer pre-training checkpoint must hold (``rep_template`` aside).

    Derived from this project's model under the authors' key names (``encoder.uniformer.*``, ``decoder.*``); the
    test suite checks them against the key list measured from the authors' release. The keys of
    :data:`OFFICIAL_UNUSED_KEYS` may be present too and are not listed.
    """
    from brainmvp_components.networks.uniformer import uniformer_preset

    encoder = uniformer_preset(preset, in_channels=1)
    decoder = PretrainDecoder(encoder.out_channels)
    shapes = {OFFICIAL_ENCODER_PREFIX + k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    shapes.update({f"decoder.{k}": tuple(v.shape) for k, v in decoder.state_dict().items()})
    return shapes


def check_official_structure(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Check the keys and shapes of the authors' checkpoint (either variant), since no hash of it is published.

    The variant is told by the keys (:func:`official_checkpoint_variant`). UniFormer: every key of
    :func:`official_state_dict_shapes` must be present with its shape, the only other keys allowed being the unused
    ones (:data:`OFFICIAL_UNUSED_KEYS`) and ``rep_template``. UNet: every key of
    :func:`official_unet_state_dict_shapes` with its shape, and nothing else but ``rep_template``. ``rep_template``
    is ``(M, H, W, D)`` with ``M`` at most 8 templates (required in the UniFormer file, optional in the UNet one).

    Raises:
        CheckpointFormatError: naming the file, the variant, the first mismatching key and every missing,
            unexpected or mis-shaped key.
    """
    unet = official_checkpoint_variant(state) == "unet"
    if unet:
        expected = official_unet_state_dict_shapes()
        problem = _structure_problems(expected, state, allowed=lambda k: k == OFFICIAL_TEMPLATE_KEY)
    else:
        expected = official_state_dict_shapes()
        problem = _structure_problems(
            expected, state, allowed=lambda k: k == OFFICIAL_TEMPLATE_KEY or bool(OFFICIAL_UNUSED_KEYS.match(k))
        )
    template = state.get(OFFICIAL_TEMPLATE_KEY)
    if (template is not None or not unet) and (
        template is None or template.ndim != 4 or not 1 <= template.shape[0] <= OFFICIAL_TEMPLATE_ROWS
    ):
        shape = None if template is None else tuple(template.shape)
        wrong = f"{OFFICIAL_TEMPLATE_KEY}: {shape} instead of (M <= {OFFICIAL_TEMPLATE_ROWS}, H, W, D)"
        problem = f"{problem}; {wrong}" if problem else f"first mismatching key {OFFICIAL_TEMPLATE_KEY!r}; {wrong}"
    if problem:
        raise CheckpointFormatError(
            f"{source}: not the authors' BrainMVP {'UNet' if unet else 'UniFormer'} checkpoint (no hash is "
            f"published, so its structure is checked): {problem}. A partial download leaves an unreadable or "
            "incomplete file: delete it and download it again."
        )


def prepare_official_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert the authors' checkpoint (UniFormer or UNet variant) on first use; later calls return the conversion.

    The structure is checked (:func:`check_official_structure`), then :func:`convert_official_checkpoint` writes
    ``encoder.pt``, ``model.pt`` and ``templates/`` into ``out_dir`` (default: ``<path without .pt>_converted``
    beside the file), with ``source.json`` recording the file's size and modification time: a changed file is
    converted again.

    Returns:
        ``out_dir``.
    """
    import json

    from brainmvp_components.utils.writers import write_json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: download the authors' checkpoint with "
            "'python -m monai.bundle download_large_files --bundle_path <bundle>' (needs gdown) or by hand"
        )
    out = Path(out_dir) if out_dir is not None else path.with_name(path.stem + CONVERTED_SUFFIX)
    stat = path.stat()
    stamp = {"source": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record = out / "source.json"
    if record.is_file() and (out / "encoder.pt").is_file():
        try:
            if json.loads(record.read_text()) == stamp:
                return out
        except json.JSONDecodeError:
            pass
    check_official_structure(read_state_dict(path), str(path))
    convert_official_checkpoint(path, out)
    write_json(record, stamp)
    return out
