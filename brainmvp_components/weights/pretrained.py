"""Pre-trained weights for downstream networks: finding the encoder and templates a bundle should start from,
and loading an encoder's weights into a segmentation or classification network.

Any file format of :mod:`brainmvp_components.weights.official` is accepted; the authors' checkpoints are converted
on first use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from brainmvp_components.weights.official import (
    OFFICIAL_ENCODER_PREFIX,
    OFFICIAL_TEMPLATE_KEY,
    UNET_MARKERS,
    CheckpointFormatError,
    official_unet_to_network_state_dict,
    prepare_official_checkpoint,
    read_state_dict,
)

__all__ = [
    "STEM_MODES",
    "find_pretrained_encoder",
    "find_templates_dir",
    "load_encoder_if_present",
    "load_pretrained_encoder",
]

logger = logging.getLogger(__name__)

_ENCODER_STEMS = ("patch_embed1.proj.", "conv1a.")
_DECODER_STEM = "decoder.proj1.proj."
STEM_MODES: tuple[str, ...] = ("adapt", "reinitialise")
"""What :func:`load_pretrained_encoder` does with a single-channel pre-trained stem in a multi-channel network."""
_HEAD_PREFIXES = ("decoder.out.", "ms_out.", "decoder.up1conv.")


def _split_source(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Encoder weights (the encoder's key names), the other weights (network key names where known, else as named
    in the file) and the format name."""
    if all(k in state for k in UNET_MARKERS):
        mapped, other = official_unet_to_network_state_dict(state)
        encoder = {k[len("encoder.") :]: v for k, v in mapped.items() if k.startswith("encoder.")}
        rest = {**{k: v for k, v in mapped.items() if not k.startswith("encoder.")}, **other}
        return encoder, rest, "official UNet pre-training checkpoint"
    for prefix, file_format in (
        (OFFICIAL_ENCODER_PREFIX, "official pre-training checkpoint"),
        ("encoder.", "network state dict with an encoder"),
    ):
        if any(k.startswith(prefix) for k in state):
            encoder = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
            return encoder, rest, file_format
    return dict(state), {}, "encoder state dict"


def load_pretrained_encoder(
    network: nn.Module,
    path: str | os.PathLike,
    strict_stem: bool = False,
    include_decoder: bool = False,
    map_location: str | torch.device = "cpu",
    stem: str = "reinitialise",
) -> dict[str, list[str]]:
    """Load pre-trained encoder weights into ``network.encoder`` (or into ``network`` if it has no ``encoder``; into
    ``network.encoder.encoder``, the shared single-channel encoder, when the encoder is a
    :class:`~brainmvp_components.networks.modality_wise.ModalityWiseEncoder`, whose stem then loads as it is).

    Accepted files: an ``encoder.pt`` (plain :class:`UniFormer3D` or :class:`ResUNetEncoder` state dict), a
    pre-training ``model.pt``, the authors' pre-training checkpoints (UniFormer or UNet variant), or any state
    dict with ``encoder.*`` keys (the authors' fine-tuned UniUNet, a UniUNet, ResUNet or classifier of this
    project).

    The input stem adapts to the channel count. When ``patch_embed1.proj.weight`` (UniFormer) or
    ``conv1a.weight`` (ResUNet) differs in input channels (BrainMVP pre-trains a single-channel stem, one
    modality at a time; a segmentation network reads four), ``stem="adapt"`` gives every input channel the
    pre-trained filters divided by the channel count, so that the layers after the stem receive the features
    they were trained on (of the modalities' mean image) instead of those of a random stem: what a frozen encoder
    needs, since its stem cannot learn. ``stem="reinitialise"`` (the default) leaves the stem as initialised in
    ``network``, as the authors' fine-tuning does; ``strict_stem`` raises. A stem that differs otherwise is
    re-initialised; any other shape mismatch is an error.

    With ``include_decoder=True``, the file's non-encoder weights whose names exist in ``network`` are loaded
    too, as the authors' fine-tuning does (the pre-trained ``decoderN.transp_conv`` weights fit UniUNet, the
    UNet variant's ``decoder.*`` fit ResUNet); there ``decoder.proj1.proj.*`` is the stem of the skip path and
    the output heads (``decoder.out.*``, ``decoder.up1conv.*``, ``ms_out.*``) may differ in class count: on a
    shape mismatch they are left as initialised.

    Args:
        network: a network with an ``encoder`` attribute (UniUNet, classifier, pre-training model) or an encoder.
        path: the weights file.
        strict_stem: raise instead of adapting or re-initialising a stem whose channel count differs.
        stem: ``"adapt"`` or ``"reinitialise"`` a single-channel pre-trained stem (see above).
        include_decoder: also load matching non-encoder weights (see above).
        map_location: passed to ``torch.load``.

    Returns:
        ``{"loaded": [...], "adapted": [...], "reinitialised": [...], "missing": [...], "unused": [...]}``, key
        names as in ``network.state_dict()`` (``adapted``: stem weights loaded across channels, also in
        ``loaded``; ``unused``: the file's keys that found no place). The lists are logged.

    Raises:
        CheckpointFormatError: no encoder weight of the file fits the network.
        ValueError: a shape mismatch outside the stem (and heads); the message names the key and both shapes.
    """
    if stem not in STEM_MODES:
        raise ValueError(f"stem must be one of {STEM_MODES}, got {stem!r}")
    source = str(path)
    state = read_state_dict(path, map_location)
    encoder_state, rest, file_format = _split_source(state)
    # descend to the module the file's encoder fills: a network's encoder, and a modality-wise encoder's shared one
    target, prefix = network, ""
    while isinstance(getattr(target, "encoder", None), nn.Module):
        target, prefix = target.encoder, prefix + "encoder."
    expected = network.state_dict()

    candidates = {prefix + k: v for k, v in encoder_state.items()}
    scope = [k for k in expected if k.startswith(prefix)]
    if include_decoder:
        candidates.update(rest)
        scope = list(expected)

    reinit_groups, adapted = [], []
    for group in (*(prefix + name for name in _ENCODER_STEMS), _DECODER_STEM):
        weight = group + "weight"
        if weight in candidates and weight in expected and candidates[weight].shape != expected[weight].shape:
            if strict_stem:
                raise ValueError(
                    f"{source}: input stem {weight} has shape {tuple(candidates[weight].shape)} in the file but "
                    f"{tuple(expected[weight].shape)} in the network (strict_stem=True)"
                )
            found, wanted = candidates[weight], expected[weight]
            channels = wanted.shape[1]
            if (
                stem == "adapt"
                and found.shape[1] == 1
                and found.shape[:1] + found.shape[2:] == wanted.shape[:1] + wanted.shape[2:]
            ):
                candidates[weight] = found.repeat(1, channels, *([1] * (found.ndim - 2))) / channels
                adapted.append(weight)
            else:
                reinit_groups.append(group)

    loaded: dict[str, torch.Tensor] = {}
    reinitialised, unused = [], []
    for key, value in candidates.items():
        if key not in expected:
            unused.append(key)
        elif any(key.startswith(group) for group in reinit_groups):
            reinitialised.append(key)
        elif value.shape != expected[key].shape:
            if include_decoder and key.startswith(_HEAD_PREFIXES):
                reinitialised.append(key)
                continue
            raise ValueError(
                f"{source}: shape mismatch for {key}: file {tuple(value.shape)} vs network {tuple(expected[key].shape)}"
            )
        else:
            loaded[key] = value
    if not any(k.startswith(prefix) for k in loaded):
        raise CheckpointFormatError(
            f"{source}: no encoder weight of this {file_format} fits {type(target).__name__} "
            f"(file keys like {list(encoder_state)[:3]}, network keys like {scope[:3]})"
        )
    network.load_state_dict(loaded, strict=False)
    missing = [k for k in scope if k not in loaded and k not in reinitialised]
    summary = {
        "loaded": list(loaded),
        "adapted": adapted,
        "reinitialised": reinitialised,
        "missing": missing,
        "unused": unused,
    }
    logger.info(
        "%s (%s): loaded %d tensors into %s; stem adapted across input channels %s; re-initialised %s; "
        "missing %s; unused %d",
        source,
        file_format,
        len(loaded),
        type(network).__name__,
        adapted,
        reinitialised,
        missing,
        len(unused),
    )
    logger.debug("unused keys of %s: %s", source, unused)
    return summary


def find_pretrained_encoder(*candidates: str | os.PathLike | None) -> str | None:
    """The first existing file of ``candidates``, the authors' checkpoint converted on first use
    (:func:`prepare_official_checkpoint`; then its ``encoder.pt``). When none exists, the first candidate, so that
    the caller's "not found" message names it (``None`` without candidates)."""
    for candidate in candidates:
        if candidate is None or not Path(candidate).is_file():
            continue
        path = Path(candidate)
        keys = read_state_dict(path).keys()
        if OFFICIAL_TEMPLATE_KEY in keys or all(k in keys for k in UNET_MARKERS):
            return str(prepare_official_checkpoint(path) / "encoder.pt")
        return str(path)
    named = [c for c in candidates if c is not None]
    return str(named[0]) if named else None


def find_templates_dir(*candidates: str | os.PathLike | None) -> str | None:
    """The first of ``candidates`` that holds ``template_<modality>.nii[.gz]`` files (directly or in a
    ``templates`` sub-folder), else the last folder candidate, so that the caller's warning names a folder.

    The downstream bundles look in their own ``models/templates`` first (a packaged release carries its templates
    there), then beside the pre-training bundle (``../brainmvp_pretrain/models/templates``), then in the authors'
    checkpoint ``models/official/BrainMVP_uniformer.pt`` when downloaded: a candidate that is a file is taken as
    that checkpoint and converted on first use
    (:func:`~brainmvp_components.weights.official.prepare_official_checkpoint`).
    """
    chosen = [c for c in candidates if c is not None]
    for candidate in chosen:
        folder = Path(candidate)
        if folder.is_file():  # the authors' checkpoint: its templates, converted on first use
            return str(prepare_official_checkpoint(folder) / "templates")
        if any(folder.glob("template_*.nii*")) or any((folder / "templates").glob("template_*.nii*")):
            return str(candidate)
    folders = [c for c in chosen if not Path(c).suffix == ".pt"]
    return str((folders or chosen)[-1]) if chosen else None


def load_encoder_if_present(
    network: nn.Module, path: str | os.PathLike | None, stem: str = "reinitialise"
) -> nn.Module:
    """:func:`load_pretrained_encoder` (with ``stem``) when ``path`` is an existing file; returns ``network`` (for
    chaining in configs).

    ``None``, an empty string or a missing file leave the encoder as initialised, with a warning that the
    encoder trains from scratch.
    """
    if not path or not Path(path).is_file():
        logger.warning("pre-trained encoder %r not found: the encoder trains from scratch", path)
        return network
    load_pretrained_encoder(network, str(path), stem=stem)
    return network
