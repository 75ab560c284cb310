"""Resumable training checkpoints, shared by the brainmvp bundles.

A run that is killed (pre-emption, a wall-clock limit, Ctrl-C) and started again with the same command resumes
after its last completed epoch instead of starting over. :class:`ResumableCheckpoint` is one ignite handler that

- when the engine starts, finds the newest ``checkpoint_epoch=N.pt`` under ``save_dir`` (:func:`latest_checkpoint`)
  and loads it into the network, optimizer, lr scheduler, the trainer's state (epoch and iteration, so ignite
  continues with epoch ``N + 1``) and the trainer's AMP gradient scaler when it has one;
- every ``save_interval`` epochs writes the same objects atomically (a temporary file renamed into place, so a
  kill mid-write never leaves a truncated checkpoint) and keeps only the newest ``n_saved`` files.

The trainer and its scaler are taken from the engine the handler is attached to, so a bundle config names only
the objects it builds. ``DistributedDataParallel``/``DataParallel`` wrappers are unwrapped (the files hold plain
module state dicts, loadable with or without DDP); under ``torch.distributed`` every rank loads, rank 0 writes.

Config pattern (one entry, first in ``train#handlers``; ``"resume": false`` or ``--resume false`` starts over)::

    "checkpoint_dir": "$@bundle_root + '/models/checkpoints'",
    "train#handlers": [
        {
            "_target_": "brainmvp_components.weights.checkpoints.ResumableCheckpoint",
            "save_dir": "@checkpoint_dir",
            "save_dict": {"network": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"},
            "resume": "@resume"
        },
        ...
    ]

Checkpoints are epoch-granular: a run killed in the middle of epoch ``N + 1`` repeats that epoch.

Only a checkpoint of *this* run is resumed. Each checkpoint records the run that wrote it: a digest of the
handler's ``run_settings`` (for example the training data list) and, with ``check_start_weights``, a digest of the
weights the run started from. A newest checkpoint whose record differs belongs to another run (other data, or a
run that fine-tunes from other weights, as MONAI Label's training does from ``models/model.pt``): it is moved to
``save_dir/previous_run/`` and training starts over. Given the ``validator``, a checkpoint also holds the
validator's best metric, so a resumed run keeps its own best so far and a new run starts without one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from torch import nn

from brainmvp_components.utils.misc import as_flag, is_rank_zero, unwrap_module
from brainmvp_components.utils.writers import atomic_torch_save, write_json

__all__ = [
    "CHECKPOINT_PREFIX",
    "BestModelSaver",
    "ResumableCheckpoint",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "settings_digest",
    "weights_digest",
]

CHECKPOINT_PREFIX = "checkpoint"
PREVIOUS_RUN_DIR = "previous_run"
_TMP_SUFFIX = ".tmp"
_RUN_KEY = "run"
_VALIDATOR_KEY = "validator"


def settings_digest(settings: Mapping[str, Any] | None) -> str:
    """SHA-256 of ``settings`` as canonical JSON (sorted keys; values that JSON cannot hold are written as text)."""
    text = json.dumps({} if settings is None else dict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_digest(modules: Mapping[str, Any]) -> str:
    """SHA-256 of the state dicts of the ``nn.Module`` values of ``modules`` (names, then each tensor's bytes)."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        module = unwrap_module(modules[name])
        if not isinstance(module, nn.Module):
            continue
        for key, value in module.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
            else:
                digest.update(repr(value).encode())
    return digest.hexdigest()


def checkpoint_path(directory: str | os.PathLike, epoch: int, prefix: str = CHECKPOINT_PREFIX) -> Path:
    """``directory/<prefix>_epoch=<epoch>.pt``, the file :class:`ResumableCheckpoint` writes after ``epoch``."""
    return Path(directory) / f"{prefix}_epoch={int(epoch)}.pt"


def list_checkpoints(directory: str | os.PathLike, prefix: str = CHECKPOINT_PREFIX) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint in ``directory``, oldest first; ``[]`` when there is none."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}_epoch=(\d+)\.pt$")
    found = []
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike, prefix: str = CHECKPOINT_PREFIX) -> str | None:
    """Path of the newest (highest-epoch) checkpoint in ``directory``, or ``None`` when there is none."""
    found = list_checkpoints(directory, prefix)
    return str(found[-1][1]) if found else None


class ResumableCheckpoint:
    """Save resumable checkpoints every few epochs and resume from the newest one when the engine starts.

    Args:
        save_dir: folder of the checkpoints (created when needed).
        save_dict: the objects to save and restore besides the trainer, e.g.
            ``{"network": net, "optimizer": opt, "lr_scheduler": sched}``; each needs ``state_dict`` and
            ``load_state_dict``. The keys ``"trainer"`` and ``"scaler"`` are reserved (added from the engine).
        save_interval: write a checkpoint every this many epochs.
        n_saved: how many of the newest checkpoints to keep (``None``: keep all).
        resume: load the newest checkpoint of ``save_dir`` when the engine starts. ``False`` starts over and
            deletes the checkpoints an earlier run left in ``save_dir`` (they would otherwise be resumed later).
        map_location: ``torch.load`` location for the tensors; ``"cpu"`` (default) avoids a GPU memory spike, the
            state dicts are copied onto the objects' devices when loaded.
        strict: strict key matching for modules.
        file_prefix: checkpoint file names are ``<file_prefix>_epoch=<N>.pt``.
        name: logger name; default the engine's logger.
        run_settings: what defines this run besides the configuration of the saved objects, e.g.
            ``{"training_data": [...]}`` (JSON-serialisable; other values are compared as text). A checkpoint written
            with other settings belongs to another run and is not resumed.
        check_start_weights: also require the same starting weights: the digest of the ``nn.Module`` objects of
            ``save_dict`` when the engine starts (after the handlers attached before this one, such as a
            ``CheckpointLoader`` that initialises the network, have run). A run that starts from other weights is
            a new run, e.g. each MONAI Label training request, which fine-tunes from the current ``model.pt``.
        validator: the validation evaluator; its ``best_metric`` and ``best_metric_epoch`` are saved with each
            checkpoint and restored on resumption, so :class:`BestModelSaver` replaces the model only with a
            better one of the same run.

    Raises:
        ValueError: on resumption, when the newest checkpoint of this run lies beyond the configured number of
            epochs.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 1,
        n_saved: int | None = 2,
        resume: bool = True,
        map_location: Any = "cpu",
        strict: bool = True,
        file_prefix: str = CHECKPOINT_PREFIX,
        name: str | None = None,
        run_settings: Mapping[str, Any] | None = None,
        check_start_weights: bool = False,
        validator: Engine | None = None,
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to checkpoint")
        reserved = {"trainer", "scaler"} & set(save_dict)
        if reserved:
            raise ValueError(f"save_dict keys {sorted(reserved)} are reserved: the trainer and its scaler are added")
        if int(save_interval) < 1:
            raise ValueError(f"save_interval must be a positive number of epochs, got {save_interval}")
        if n_saved is not None and int(n_saved) < 1:
            raise ValueError(f"n_saved must be positive or None, got {n_saved}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.n_saved = None if n_saved is None else int(n_saved)
        self.resume = as_flag(resume, "resume")
        self.map_location = map_location
        self.strict = strict
        self.file_prefix = file_prefix
        self.run_settings = settings_digest(run_settings)
        self.check_start_weights = as_flag(check_start_weights, "check_start_weights")
        self.validator = validator
        self.run_record: dict[str, str] = {}
        self.resumed_from: str | None = None
        self._name = name
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.started)

    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = {key: unwrap_module(obj) for key, obj in self.save_dict.items()}
        objects["trainer"] = engine
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            objects["scaler"] = scaler
        return objects

    def _current_run(self) -> dict[str, str]:
        record = {"settings": self.run_settings}
        if self.check_start_weights:
            record["start_weights"] = weights_digest(self.save_dict)
        return record

    def _other_run(self, checkpoint: Mapping[str, Any]) -> list[str]:
        """What differs between this run and the one that wrote ``checkpoint`` (``[]``: the same run; a
        checkpoint without a run record, from before records were kept, counts as the same run)."""
        written = checkpoint.get(_RUN_KEY)
        if not isinstance(written, Mapping):
            return []
        names = {"settings": "run settings", "start_weights": "starting weights"}
        return [names[k] for k in self.run_record if k in written and written[k] != self.run_record[k]]

    def _set_aside(self, reason: str) -> None:
        """Move the checkpoints of another run to ``save_dir/previous_run/`` (replacing what was there)."""
        if not is_rank_zero():
            return
        found = list_checkpoints(self.save_dir, self.file_prefix)
        if not found:
            return
        previous = self.save_dir / PREVIOUS_RUN_DIR
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir(parents=True)
        for _, old in found:
            old.replace(previous / old.name)
        self.logger.warning(
            f"the checkpoints in {self.save_dir} belong to another run ({reason} differ): training starts over; "
            f"they were moved to {previous}"
        )

    def started(self, engine: Engine) -> None:
        """Resume from the newest checkpoint of this run, then schedule saving after every other epoch-end
        handler."""
        if is_rank_zero():
            # a save killed mid-write leaves only its temporary file behind
            for stale in self.save_dir.glob(f".{self.file_prefix}_epoch=*{_TMP_SUFFIX}"):
                stale.unlink(missing_ok=True)
        self.run_record = self._current_run()
        self.resumed_from = None
        if self.resume:
            path = latest_checkpoint(self.save_dir, self.file_prefix)
            checkpoint = None if path is None else torch.load(path, map_location=self.map_location, weights_only=True)
            differs = [] if checkpoint is None else self._other_run(checkpoint)
            if path is None:
                self.logger.info(f"no checkpoint in {self.save_dir}: training starts at epoch 1")
            elif differs:
                self._set_aside(" and ".join(differs))
            else:
                self.load(engine, path, checkpoint)
        elif is_rank_zero():
            for _, old in list_checkpoints(self.save_dir, self.file_prefix):
                self.logger.warning(f"resume is off: removing {old} of an earlier run")
                old.unlink(missing_ok=True)
        # registered now rather than in attach() so it runs after the handlers attached with the engine (the lr
        # scheduler's epoch step included): a checkpoint then holds the state the next epoch starts from
        if not engine.has_event_handler(self.epoch_completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def load(self, engine: Engine, path: str | os.PathLike, checkpoint: Mapping[str, Any] | None = None) -> None:
        """Load checkpoint ``path`` (or its already loaded content ``checkpoint``) into the objects and the engine's
        state (its ``max_epochs`` is kept), and the validator's best metric when the checkpoint holds it."""
        if checkpoint is None:
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        objects = self._objects(engine)
        if "scaler" in objects and "scaler" not in checkpoint:
            self.logger.warning(f"{path} holds no AMP gradient scaler state; the scaler starts afresh")
            objects.pop("scaler")
        missing = sorted(set(objects) - set(checkpoint))
        if missing:
            raise ValueError(
                f"checkpoint {path} has no entries {missing} (it holds {sorted(checkpoint)}); it was written by "
                "another configuration. Move it away or pass --resume false to start over."
            )
        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
        Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint, strict=self.strict)
        engine.state.max_epochs = max_epochs
        if epoch_length is not None and engine.state.epoch_length != epoch_length:
            self.logger.warning(
                f"{path} was written with {engine.state.epoch_length} iterations per epoch, this run has "
                f"{epoch_length} (the data changed); epochs continue with {epoch_length}"
            )
            engine.state.epoch_length = epoch_length
            engine.state.iteration = engine.state.epoch * epoch_length
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise ValueError(
                f"checkpoint {path} was written after epoch {engine.state.epoch}, beyond this run's {max_epochs} "
                "epochs: raise the number of epochs to continue, or pass --resume false to start over"
            )
        best = checkpoint.get(_VALIDATOR_KEY)
        if self.validator is not None and isinstance(best, Mapping):
            self.validator.state.best_metric = float(best["best_metric"])
            self.validator.state.best_metric_epoch = int(best["best_metric_epoch"])
        self.resumed_from = str(path)
        self.logger.info(
            f"resumed from {path}: epoch {engine.state.epoch} of {max_epochs} done "
            f"(iteration {engine.state.iteration}), training continues with epoch {engine.state.epoch + 1}"
        )

    def epoch_completed(self, engine: Engine) -> None:
        if engine.state.epoch % self.save_interval == 0:
            self.save(engine)

    def save(self, engine: Engine) -> Path | None:
        """Write the checkpoint of the current epoch (rank 0 only) and prune the older ones."""
        if not is_rank_zero():
            return None
        state: dict[str, Any] = {key: obj.state_dict() for key, obj in self._objects(engine).items()}
        state[_RUN_KEY] = dict(self.run_record or self._current_run())
        if self.validator is not None:
            state[_VALIDATOR_KEY] = {
                "best_metric": float(getattr(self.validator.state, "best_metric", -1)),
                "best_metric_epoch": int(getattr(self.validator.state, "best_metric_epoch", -1)),
            }
        path = atomic_torch_save(state, checkpoint_path(self.save_dir, engine.state.epoch, self.file_prefix))
        self.logger.info(f"saved checkpoint {path}")
        if self.n_saved is not None:
            for _, old in list_checkpoints(self.save_dir, self.file_prefix)[: -self.n_saved]:
                old.unlink(missing_ok=True)
        return path


class BestModelSaver:
    """Write the network's plain state dict atomically whenever the validator's key metric improves.

    Attach to the validation evaluator (``validate#handlers``). MONAI's evaluator tracks
    ``state.best_metric``/``state.best_metric_epoch``; when the epoch just validated is the new best, the
    network (unwrapped from DDP) is saved to ``path`` through :func:`atomic_torch_save`, and the metric and
    epoch to ``<path>.json``. With ``resume`` that record is read back when the evaluator starts, so a resumed
    run only replaces the file with a better model than the one it already holds.

    Args:
        network: the network to save.
        path: the output file, e.g. ``models/model.pt``.
        resume: continue from the best metric recorded in ``<path>.json`` (pass the same value as
            :class:`ResumableCheckpoint`'s ``resume``); ``False`` ignores it, so the first validation of a fresh run
            replaces the file. The record does not say which run wrote it: when the trainer's
            :class:`ResumableCheckpoint` is given the ``validator``, it restores the best metric of the run it
            resumes, and this should be ``False``.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self, network: nn.Module, path: str | os.PathLike, resume: bool = True, name: str | None = None
    ) -> None:
        self.network = network
        self.path = Path(path)
        self.record = self.path.with_name(self.path.name + ".json")
        self.resume = as_flag(resume, "resume")
        self._name = name
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.restore_best)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_if_best)

    def restore_best(self, engine: Engine) -> None:
        """Seed the evaluator's best metric from an earlier run's record (once per run)."""
        if not self.resume or getattr(self, "_restored", False):
            return
        if not self.record.is_file() or not self.path.is_file():
            return
        self._restored = True
        record = json.loads(self.record.read_text())
        engine.state.best_metric = float(record["metric"])
        engine.state.best_metric_epoch = int(record["epoch"])
        self.logger.info(
            f"best {record.get('metric_name', 'metric')} so far: {record['metric']:.4f} (epoch {record['epoch']})"
        )

    def save_if_best(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch or not is_rank_zero():
            return
        atomic_torch_save(unwrap_module(self.network).state_dict(), self.path)
        record = {
            "metric_name": getattr(engine.state, "key_metric_name", None) or "key_metric",
            "metric": float(engine.state.best_metric),
            "epoch": int(engine.state.best_metric_epoch),
        }
        write_json(self.record, record)
        self.logger.info(
            f"saved the best model so far to {self.path} ({record['metric']:.4f}, epoch {record['epoch']})"
        )
