"""Releases of trained bundles as the MONAI model zoo ships them: weights that load with ``inference.json`` alone.

A training run writes its weights under ``<bundle_root>/models`` (``model.pt``, the pre-training bundle's
``encoder.pt``, the distilled ``templates/``). :func:`package_bundle` turns that folder and the bundle's source
(``configs/``, ``docs/``, ``LICENSE``) into a release:

- the network and input settings the run was trained with (:data:`SETTINGS_IDS`; e.g. ``quick.json``'s tiny
  encoder, its spacing and ROI) are written into every packaged config that defines them, so the weights load
  with ``configs/inference.json`` alone; the release is refused when ``model.pt`` then does not load strictly;
- the model, the encoder and the templates go under ``models/``, and ``large_files.yml`` lists each of them with
  its download URL and SHA-256, in the form ``monai.bundle download_large_files`` reads;
- two zip files with the bundle folder at the zip's root, as the model zoo publishes them: ``<name>_v<version>.zip``
  with everything, and ``<name>_v<version>_nolarge.zip`` without the large files, which
  ``download_large_files`` then fetches (and checks) from ``url_base``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.utils import ID_SEP_KEY

from brainmvp_components.utils.writers import atomic_write, atomic_write_text

__all__ = [
    "SETTINGS_IDS",
    "LARGE_FILES_NAME",
    "Release",
    "sha256sum",
    "settings_overrides",
    "bake_settings",
    "large_files_yaml",
    "zip_bundle",
    "check_weights_load",
    "package_bundle",
]

logger = logging.getLogger(__name__)

SETTINGS_IDS: tuple[str, ...] = (
    "network_def",
    "preset",
    "template_spacing",
    "input_modalities",
    "num_classes",
    "class_names",
    "label_convention",
    "spacing",
    "pixdim",
    "roi_size",
    "mask_ratio",
    "block_size",
)
"""Config ids that decide the network's architecture or what its input looks like. A release takes their
values from the training run, so that its ``inference.json`` builds the network the weights belong to and feeds
it the images it was trained on."""

LARGE_FILES_NAME = "large_files.yml"
SOURCE_ITEMS = ("configs", "docs", "LICENSE")
"""What a release copies from the bundle's source folder."""

ZIP_DATE = (2022, 5, 30, 0, 0, 0)
"""Timestamp of every zip entry, so the same release zips to the same bytes."""


@dataclass
class Release:
    """What :func:`package_bundle` wrote."""

    bundle_dir: Path
    zip_path: Path
    nolarge_zip_path: Path
    large_files: list[dict] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    """Leaf ids of a raw config value: nested dictionaries are walked, lists and scalars are leaves."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_leaves(sub, f"{prefix}{ID_SEP_KEY}{key}"))
        return out
    return {prefix: value}


def _raw_config(config_files: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None) -> ConfigParser:
    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in config_files]))
    for key, value in (overrides or {}).items():
        parser[key.replace("#", ID_SEP_KEY)] = value
    return parser


def settings_overrides(
    default_files: Sequence[str | os.PathLike],
    trained_files: Sequence[str | os.PathLike],
    overrides: Mapping[str, Any] | None = None,
    settings_ids: Iterable[str] = SETTINGS_IDS,
) -> dict[str, Any]:
    """The raw config values of ``settings_ids`` in which the training run differed from the bundle's defaults.

    Args:
        default_files: the bundle's own training config (``train.json``).
        trained_files: the config files the run was started with (``train.json`` and ``quick.json``, say).
        overrides: ``--key value`` pairs of the run's command line (``{"spacing": [4, 4, 4]}``).
        settings_ids: the root ids to compare.

    Returns:
        ``{leaf id: value}`` with ids in MONAI's ``a::b::c`` form, e.g.
        ``{"network_def::encoder::_target_": "brainmvp_components.networks.uniformer_tiny", "roi_size": [32, ...]}``.
    """
    default = _raw_config(default_files, None)
    trained = _raw_config(trained_files, overrides)
    changed: dict[str, Any] = {}
    for root in settings_ids:
        if root not in trained:
            continue
        ours = _leaves(trained[root], root)
        theirs = _leaves(default[root], root) if root in default else {}
        changed.update({k: v for k, v in ours.items() if k not in theirs or theirs[k] != v})
    return changed


def bake_settings(config_path: str | os.PathLike, settings: Mapping[str, Any]) -> list[str]:
    """Write ``settings`` into the config file ``config_path`` where it defines their roots; returns the ids set.

    A setting whose root id (``network_def`` of ``network_def::encoder::_target_``) the file does not define is
    left out, so partial configs (``evaluate.json``) keep inheriting from ``train.json``; so is one whose parent
    the file lacks (a file that defines another network, such as ``unet.json``).
    """
    path = Path(config_path)
    parser = ConfigParser(ConfigParser.load_config_file(str(path)))
    written = []
    for key, value in settings.items():
        root = key.split(ID_SEP_KEY)[0]
        if root not in parser:
            continue
        parent = key.rsplit(ID_SEP_KEY, 1)[0] if ID_SEP_KEY in key else None
        if parent is not None and parent not in parser:
            # the file replaces the whole definition (an alternative network such as unet.json): the trained
            # run's settings describe another network and do not apply to it
            logger.warning(f"{path}: left as is for {key}: the file defines {root} differently")
            continue
        parser[key] = value
        written.append(key)
    if written:
        atomic_write_text(path, json.dumps(parser.get(), indent=4) + "\n")
    return written


def check_weights_load(
    bundle_dir: str | os.PathLike, config_name: str = "inference.json", weights: str = "models/model.pt"
) -> None:
    """Build ``network_def`` from ``configs/<config_name>`` alone and load ``weights`` into it strictly.

    Raises:
        ValueError: the weights do not fit the network; the message names both files and the mismatch.
    """
    bundle_dir = Path(bundle_dir)
    config = bundle_dir / "configs" / config_name
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle_dir)
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network_def")
    state = torch.load(bundle_dir / weights, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{bundle_dir / weights} does not load into network_def of {config}: {str(err).splitlines()[0]} ... "
            "Pass the configs and overrides the model was trained with (--config_file, --override)."
        ) from err


def large_files_yaml(entries: Sequence[Mapping[str, str]]) -> str:
    """``large_files.yml`` text in the model zoo's form (``path``, ``url``, ``hash_val``, ``hash_type``)."""
    lines = ["large_files:"]
    for entry in entries:
        lines.append(f'  - path: "{entry["path"]}"')
        for key in ("url", "hash_val", "hash_type"):
            lines.append(f'    {key}: "{entry.get(key, "")}"')
    return "\n".join(lines) + "\n"


def zip_bundle(bundle_dir: str | os.PathLike, zip_path: str | os.PathLike, exclude: Iterable[str] = ()) -> Path:
    """Zip ``bundle_dir`` with the folder itself at the zip's root (``<name>/configs/...``), as the model zoo does.

    Entries are sorted and stamped with one fixed date, so the same content gives the same bytes. ``exclude``
    lists paths relative to ``bundle_dir`` to leave out. Written atomically.
    """
    bundle_dir = Path(bundle_dir)
    skip = {Path(p).as_posix() for p in exclude}
    files = sorted(p for p in bundle_dir.rglob("*") if p.is_file() and p.relative_to(bundle_dir).as_posix() not in skip)

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for path in files:
                info = zipfile.ZipInfo(f"{bundle_dir.name}/{path.relative_to(bundle_dir).as_posix()}", ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())

    return atomic_write(zip_path, write, suffix=".zip")


def _copy_models(trained_models: Path, templates_dir: Path | None, target: Path) -> list[Path]:
    """Copy the weights and templates into ``target/models``; returns the copied large files."""
    models = target / "models"
    models.mkdir(parents=True, exist_ok=True)
    model = trained_models / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(f"no trained model at {model}: give the bundle_root of a finished training run")
    large = []
    for name in ("model.pt", "encoder.pt"):
        if (trained_models / name).is_file():
            shutil.copy2(trained_models / name, models / name)
            large.append(models / name)
    settings = trained_models / "training_settings.json"
    if settings.is_file():
        shutil.copy2(settings, models / settings.name)
    source = templates_dir if templates_dir is not None else trained_models / "templates"
    templates = sorted(source.glob("template_*.nii*")) if source.is_dir() else []
    if templates_dir is not None and not templates:
        raise FileNotFoundError(f"no template_<modality>.nii.gz files in {templates_dir}")
    for path in templates:
        (models / "templates").mkdir(exist_ok=True)
        shutil.copy2(path, models / "templates" / path.name)
        large.append(models / "templates" / path.name)
    if not templates:
        logger.warning(f"no distilled templates in {source}: the release carries none")
    return large


def package_bundle(
    bundle_source: str | os.PathLike,
    trained_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    url_base: str,
    config_files: Sequence[str | os.PathLike] | None = None,
    overrides: Mapping[str, Any] | None = None,
    templates_dir: str | os.PathLike | None = None,
) -> Release:
    """Package a trained bundle as a model-zoo release (see the module docstring).

    Args:
        bundle_source: the bundle's source folder (``bundles/<name>``: ``configs/``, ``docs/``, ``LICENSE``).
        trained_root: the ``bundle_root`` of the training run (holding ``models/model.pt``).
        output_dir: where ``<name>/``, ``<name>_v<version>.zip`` and ``<name>_v<version>_nolarge.zip`` go.
        url_base: URL under which the release's files will be served: ``<url_base>/models/model.pt`` is the
            model's URL in ``large_files.yml``.
        config_files: the config files the run was started with; default the bundle's ``train.json``.
        overrides: the run's command-line ``--key value`` pairs that set :data:`SETTINGS_IDS`.
        templates_dir: templates to ship instead of ``<trained_root>/models/templates``.

    Raises:
        FileNotFoundError: no trained model, or no templates in ``templates_dir``.
        ValueError: the weights do not load into the packaged ``inference.json``'s network.
    """
    source = Path(bundle_source)
    name = source.name
    metadata = json.loads((source / "configs" / "metadata.json").read_text())
    version = str(metadata["version"])
    default_train = [source / "configs" / "train.json"]
    settings = settings_overrides(default_train, config_files or default_train, overrides)

    out = Path(output_dir)
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for item in SOURCE_ITEMS:
        path = source / item
        if path.is_dir():
            shutil.copytree(path, target / item)
        elif path.is_file():
            shutil.copy2(path, target / item)
    for config in sorted((target / "configs").glob("*.json")):
        if config.name != "metadata.json":
            bake_settings(config, settings)
    large = _copy_models(Path(trained_root) / "models", None if templates_dir is None else Path(templates_dir), target)
    check_weights_load(target)
    if (target / "models" / "encoder.pt").is_file():
        check_weights_encoder(target)

    base = url_base.rstrip("/")
    entries = []
    for path in large:
        relative = path.relative_to(target).as_posix()
        entry = {"path": relative, "url": f"{base}/{relative}", "hash_val": sha256sum(path), "hash_type": "sha256"}
        entries.append(entry)
    atomic_write_text(target / LARGE_FILES_NAME, large_files_yaml(entries))
    relative_large = [e["path"] for e in entries]
    zip_path = zip_bundle(target, out / f"{name}_v{version}.zip")
    nolarge = zip_bundle(target, out / f"{name}_v{version}_nolarge.zip", exclude=relative_large)
    for archive in (zip_path, nolarge):
        atomic_write_text(archive.with_name(archive.name + ".sha256"), f"{sha256sum(archive)}  {archive.name}\n")
    logger.info(f"packaged {name} v{version} into {out}: settings {sorted(settings)}; large files {relative_large}")
    return Release(target, zip_path, nolarge, entries, settings)


def check_weights_encoder(bundle_dir: str | os.PathLike) -> None:
    """Load ``models/encoder.pt`` strictly into ``network_def.encoder`` of the packaged ``inference.json``."""
    bundle_dir = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    encoder = parser.get_parsed_content("network_def").encoder
    state = torch.load(bundle_dir / "models" / "encoder.pt", map_location="cpu", weights_only=True)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{bundle_dir / 'models' / 'encoder.pt'} does not load into the encoder of the packaged inference.json: "
            f"{str(err).splitlines()[0]}"
        ) from err
