"""Training data sets whose memory does not grow with the number of cases.

:func:`training_dataset` chooses where the deterministic part of the pre-processing (everything before the
first random transform) is kept:

- ``"disk"``: a :class:`monai.data.PersistentDataset` under ``cache_dir``. Each case is pre-processed the
  first time it is drawn and written to disk, so the first epoch starts at once and trains while the cache
  fills, later epochs read the cached tensors, and resident memory stays flat however many cases there are.
  The cache key covers the datalist entry, the size and modification time of every file it names, the cached
  transforms (classes, settings, dtypes, functions' code) and the MONAI and brainmvp versions, so regenerated
  images or a changed pipeline are pre-processed again instead of read stale. Settings that cannot be
  described (arbitrary objects) count by their class only: clear the folder after changing those.
- ``"memory"``: a :class:`monai.data.CacheDataset` holding ``cache_rate`` of the cases in RAM, built before
  training starts. Fastest per epoch for a small cohort; memory grows linearly with its size.
- ``"none"``: a plain :class:`monai.data.Dataset` that pre-processes every case on every draw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from enum import Enum
from pathlib import Path

import monai
import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.transforms import Transform
from monai.utils import convert_to_tensor

from brainmvp_components.utils.writers import atomic_torch_save

CACHE_MODES = ("disk", "memory", "none")
logger = logging.getLogger(__name__)


def _file_paths(value) -> list[str]:
    if isinstance(value, str):
        return [value] if os.path.isfile(value) else []
    if isinstance(value, Mapping):
        return [path for item in value.values() for path in _file_paths(item)]
    if isinstance(value, Sequence):
        return [path for item in value for path in _file_paths(item)]
    return []


def entry_and_files_hash(entry: Mapping) -> bytes:
    """Hex digest of a datalist entry together with the size and modification time of the files it names."""
    stamps = []
    for path in _file_paths(entry):
        status = os.stat(path)
        stamps.append([path, status.st_size, status.st_mtime_ns])
    text = json.dumps([entry, stamps], sort_keys=True, default=str)
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest().encode("utf-8")


def _describe(value, depth: int = 0):
    """A JSON-able description of a cached transform's setting; ``_OPAQUE`` where none can be made."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (torch.dtype, np.dtype, type)):
        return str(value)
    if isinstance(value, np.ndarray) and value.size <= 64:
        return value.tolist()
    if isinstance(value, (list, tuple)) and len(value) <= 64:
        return [_describe(item, depth) for item in value]
    if isinstance(value, Mapping) and len(value) <= 64:
        return {str(key): _describe(item, depth) for key, item in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, Transform) and depth < 3:
        settings = {key: _describe(item, depth + 1) for key, item in sorted(vars(value).items())}
        return [type(value).__name__, {key: item for key, item in settings.items() if item is not _OPAQUE}]
    code = getattr(value, "__code__", None)
    if code is not None:  # a function or lambda: its name and its compiled body, so an edited lambda differs
        body = hashlib.md5(code.co_code + repr(code.co_consts).encode(), usedforsecurity=False).hexdigest()
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}:{body}"
    if hasattr(value, "__dict__"):  # deeper transforms, readers and other configured objects
        return type(value).__qualname__
    return _OPAQUE


_OPAQUE = object()


def transforms_hash(transforms: Sequence[Transform]) -> bytes:
    """Hex digest of the cached transforms (their classes and settings) and of the MONAI and brainmvp versions."""
    from brainmvp_components import __version__

    described = [monai.__version__, __version__, [_describe(transform) for transform in transforms]]
    text = json.dumps(described, default=lambda _: None)
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest().encode("utf-8")


def _without_numpy(value):
    """``value`` loadable with ``weights_only``: NumPy arrays and scalars as tensors, enums as their values."""
    if isinstance(value, MetaTensor):
        value.meta = _without_numpy(dict(value.meta))
        value.applied_operations = _without_numpy(list(value.applied_operations))
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.as_tensor(value)
    if isinstance(value, Enum):  # MONAI's string enums in the metadata (TraceKeys) compare equal to their value
        return value.value
    if isinstance(value, Mapping):
        return {_without_numpy(key): _without_numpy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_without_numpy(item) for item in value)
    return value


class AtomicPersistentDataset(PersistentDataset):
    """:class:`monai.data.PersistentDataset` whose cache files appear atomically, safe for concurrent readers.

    MONAI's version writes each file in the system's temporary folder and moves it into the cache, which is a
    copy (readable half-written) when the two are on different file systems. Here the file is written next to
    its final name and renamed (:func:`~brainmvp_components.utils.writers.atomic_torch_save`), so the ranks of a
    distributed run and the workers of a data loader sharing one cache never read a partial file; an
    unreadable file is recomputed. NumPy values, which ``torch.load(..., weights_only=True)`` refuses (the
    NIfTI header in a ``MetaTensor``'s metadata), are stored as tensors, so the cache is read back instead of
    silently recomputed on every access.
    """

    def _cachecheck(self, item_transformed):
        if self.cache_dir is None:
            return super()._cachecheck(item_transformed)
        name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        cache_file = self.cache_dir / f"{name}.pt"
        if cache_file.is_file():
            try:
                return torch.load(cache_file, weights_only=self.weights_only)
            except Exception as error:  # noqa: BLE001 - any unreadable file is rebuilt below
                logger.warning("recomputing the unreadable cache file %s: %s", cache_file, error)
        result = _without_numpy(self._pre_transform(deepcopy(item_transformed)))
        # returned exactly as stored, so freshly computed and cached items of one batch collate alike
        result = convert_to_tensor(result, convert_numeric=False, track_meta=self.track_meta)
        atomic_torch_save(result, cache_file)  # a uniquely named temporary file in cache_dir, then a rename
        return result


def remove_stale_partial_files(cache_dir: str | os.PathLike, older_than_s: float = 3600.0) -> int:
    """Delete the half-written temporary files that killed writers left in ``cache_dir``; returns how many."""
    removed, now = 0, time.time()
    for partial in Path(cache_dir).glob(".*.pt.*.tmp"):  # atomic_torch_save's temporary names
        try:
            if now - partial.stat().st_mtime > older_than_s:
                partial.unlink()
                removed += 1
        except FileNotFoundError:  # another process removed or finished it
            continue
    return removed


def training_dataset(
    data: Sequence[Mapping],
    transform: Callable,
    cache: str = "disk",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
) -> Dataset:
    """Build the training data set with the caching strategy ``cache`` (see the module docstring).

    Args:
        data: datalist entries (dictionaries of file paths and metadata).
        transform: the pre-processing; the part before its first random transform is what gets cached.
        cache: ``"disk"``, ``"memory"`` or ``"none"``.
        cache_dir: folder of the on-disk cache (``cache="disk"`` only); created when missing.
        cache_rate: fraction of the cases kept in memory (``cache="memory"`` only).
        num_workers: worker threads that build the in-memory cache (``cache="memory"`` only).
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if cache != "memory" and cache_rate != 1.0:
        logger.warning("cache_rate %s has no effect with cache=%r (it applies to cache='memory')", cache_rate, cache)
    if cache == "memory":
        return CacheDataset(data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers)
    if cache == "none":
        return Dataset(data=data, transform=transform)
    if not cache_dir:
        raise ValueError("cache='disk' needs a cache_dir")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    remove_stale_partial_files(cache_dir)
    return AtomicPersistentDataset(
        data=data,
        transform=transform,
        cache_dir=cache_dir,
        hash_func=entry_and_files_hash,
        hash_transform=transforms_hash,
        track_meta=True,  # the crops' affines place the templates
    )
