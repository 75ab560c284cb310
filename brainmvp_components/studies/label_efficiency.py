"""Label-efficiency studies: the study definition, its runs, the results file and the report.

A study compares initialisations of the downstream encoder (training from scratch, a masked-image-modelling
baseline, BrainMVP and its ablations) at several fractions of the training labels and several seeds, as the
paper's label-efficiency figure does. Every pre-training and every fine-tuning is a ``python -m monai.bundle run``
of the project's bundles with configuration overrides (``scripts/label_efficiency.py`` runs them); this module
holds what does not need a subprocess:

- :func:`load_study` reads and checks a study file (YAML or JSON) over :data:`DEFAULT_STUDY`;
- :func:`plan_runs` lists the pre-trainings and fine-tunings, :func:`bundle_command` builds their command lines;
- :func:`read_run_metrics` reads the test-split metrics a bundle evaluation wrote;
- :mod:`brainmvp_components.studies.results` keeps the results file and turns it into tables and the figure.
"""

from __future__ import annotations

import ast
import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_STUDY",
    "INITIALISATIONS",
    "TASKS",
    "Initialisation",
    "TaskSpec",
    "PretrainRun",
    "FinetuneRun",
    "load_study",
    "plan_runs",
    "bundle_command",
    "read_run_metrics",
]


@dataclass(frozen=True)
class Initialisation:
    """How the downstream encoder starts.

    Args:
        name: the name used in study files, ``results.csv`` and the report.
        pretrain_overrides: overrides of the pre-training bundle's ``train.json`` that make this pre-training;
            ``None`` for no pre-training (a randomly initialised encoder).
        templates: whether its pre-training distils modality templates worth using for the downstream template
            augmentation (the masked-image-modelling baseline leaves them at zero).
    """

    name: str
    pretrain_overrides: Mapping[str, Any] | None
    templates: bool = False


INITIALISATIONS: dict[str, Initialisation] = {
    init.name: init
    for init in (
        Initialisation("scratch", None),
        Initialisation("mae", {"objective": "mae"}),
        Initialisation("brainmvp", {}, templates=True),
        Initialisation("brainmvp-no-md", {"md_weight": 0.0}, templates=True),
        Initialisation("brainmvp-no-cmr", {"cmr_weight": 0.0}, templates=True),
        Initialisation("brainmvp-no-cl", {"cl_weight": 0.0}, templates=True),
    )
}
"""Built-in initialisations: no pre-training; the masked-image-modelling baseline (the pre-training bundle with
``objective: mae``: same encoder, data, masking, steps and optimizer, reconstruction only); BrainMVP; and the
paper's ablations, each proxy task's weight set to zero (distillation ``MD``, cross-modal reconstruction ``CMR``,
contrastive learning ``CL``). A study file adds its own under ``extra_initialisations``."""


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task: its bundle, its results columns and the metrics its evaluation writes."""

    bundle: str
    metrics: tuple[str, ...]
    plot_metrics: tuple[str, ...]
    labels: Mapping[str, str]


TASKS: dict[str, TaskSpec] = {
    "segmentation": TaskSpec(
        bundle="brainmvp_brats_seg",
        metrics=("dice_mean", "dice_tc", "dice_wt", "dice_et", "hd95_tc", "hd95_wt", "hd95_et"),
        plot_metrics=("dice_mean", "dice_tc", "dice_wt", "dice_et"),
        labels={
            "dice_mean": "Dice, mean of TC, WT, ET",
            "dice_tc": "Dice TC",
            "dice_wt": "Dice WT",
            "dice_et": "Dice ET",
            "hd95_tc": "HD95 TC (mm)",
            "hd95_wt": "HD95 WT (mm)",
            "hd95_et": "HD95 ET (mm)",
        },
    ),
    "classification": TaskSpec(
        bundle="brainmvp_adni_cls",
        metrics=("accuracy", "balanced_accuracy", "auc", "f1"),
        plot_metrics=("accuracy", "balanced_accuracy", "auc"),
        labels={"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auc": "AUC", "f1": "F1"},
    ),
}
"""Downstream tasks: the segmentation bundle (test-split Dice and HD95 per region) and the classification
bundle (test-split accuracy, balanced accuracy, AUC, F1)."""

_STAGE_DEFAULTS: dict[str, Any] = {"datalist": None, "cohort": {}, "configs": ["train.json"], "overrides": {}}

DEFAULT_STUDY: dict[str, Any] = {
    "output_dir": "label_efficiency",
    "task": "segmentation",
    "initialisations": list(INITIALISATIONS),
    "extra_initialisations": {},
    "fractions": [0.1, 0.2, 0.4, 1.0],
    "seeds": 3,
    "templates": "pretrained",
    "workers": 1,
    "devices": [],
    "continue_interrupted": False,
    "pretrain": {**_STAGE_DEFAULTS, "cohort": {"subjects": 16, "spacing": 1.0, "seed": 0, "val_fraction": 0.2}},
    "segmentation": {
        **_STAGE_DEFAULTS,
        "cohort": {"subjects": 40, "spacing": 1.0, "seed": 0, "val_fraction": 0.2, "test_fraction": 0.2},
        "evaluate_configs": ["evaluate.json"],
    },
    "classification": {
        **_STAGE_DEFAULTS,
        "cohort": {"subjects": 80, "spacing": 1.0, "seed": 0, "val_fraction": 0.2, "test_fraction": 0.2},
        "evaluate_configs": ["evaluate.json"],
    },
}
"""The study when a study file says nothing else (``scripts/studies/default.yaml`` spells it out): the issue's
design (label fractions 0.1, 0.2, 0.4 and 1.0, three seeds, every built-in initialisation) at the bundles' full
settings on the embedded cohorts. Stage settings: ``datalist`` (``None``: generate the embedded cohort with
``cohort``), ``configs`` (the bundle's config files, names relative to its ``configs`` folder, later ones
overriding earlier ones), ``overrides`` (``--key value`` pairs for every run of the stage) and, downstream,
``evaluate_configs`` (added to ``configs`` for the test-split evaluation)."""

COHORT_KINDS: dict[str, str] = {"pretrain": "pretrain", "segmentation": "brats", "classification": "adni"}
"""The embedded cohort of each stage."""

TEMPLATE_CHOICES: tuple[str, ...] = ("pretrained", "none")


def _merge(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key not in ("overrides",):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_study(path: str | os.PathLike | None = None, **overrides: Any) -> dict[str, Any]:
    """Read a study file (YAML or JSON) over :data:`DEFAULT_STUDY` and check it.

    Args:
        path: the study file; ``None`` for the defaults alone. Relative ``datalist`` paths in it are resolved
            against its folder; ``output_dir`` is left relative to the current directory.
        overrides: top-level settings that win over the file (``None`` values are ignored), e.g. the command
            line's ``workers``.

    Returns:
        the study: every key of :data:`DEFAULT_STUDY`, ``seeds`` as a list, ``initialisations`` as
        :class:`Initialisation` objects, ``fractions`` sorted.

    Raises:
        FileNotFoundError: the study file does not exist.
        ValueError: an unknown key, task, initialisation or template choice, a label fraction outside (0, 1],
            an empty list of seeds, fractions or initialisations, or more than one device per worker.
    """
    study = copy.deepcopy(DEFAULT_STUDY)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"study file {path} does not exist")
        import yaml

        document = yaml.safe_load(path.read_text()) or {}
        if not isinstance(document, Mapping):
            raise ValueError(f"study file {path} must hold a mapping of settings, got {type(document).__name__}")
        unknown = sorted(set(document) - set(DEFAULT_STUDY))
        if unknown:
            raise ValueError(f"study file {path}: unknown setting(s) {unknown}; known: {sorted(DEFAULT_STUDY)}")
        study = _merge(study, document)
        for stage in COHORT_KINDS:
            datalist = study[stage].get("datalist")
            if datalist is not None and not Path(datalist).is_absolute():
                study[stage]["datalist"] = str((path.parent / datalist).resolve())
    study = _merge(study, {k: v for k, v in overrides.items() if v is not None})
    return _checked(study)


def _checked(study: dict[str, Any]) -> dict[str, Any]:
    if study["task"] not in TASKS:
        raise ValueError(f"unknown task {study['task']!r}; choose one of {sorted(TASKS)}")
    if study["templates"] not in TEMPLATE_CHOICES:
        raise ValueError(f"templates must be one of {list(TEMPLATE_CHOICES)}, got {study['templates']!r}")
    known = dict(INITIALISATIONS)
    for name, pretrain in (study.get("extra_initialisations") or {}).items():
        if pretrain is not None and not isinstance(pretrain, Mapping):
            raise ValueError(f"extra initialisation {name!r}: give pre-training overrides (a mapping) or null")
        templates = bool(pretrain) and pretrain.get("objective", "brainmvp") != "mae"
        known[name] = Initialisation(name, None if pretrain is None else dict(pretrain), templates=templates)
    names = list(study["initialisations"])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown initialisation(s) {unknown}; known: {sorted(known)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"initialisations must be a non-empty list of distinct names, got {names}")
    study["initialisations"] = [known[n] for n in names]
    fractions = sorted(float(f) for f in study["fractions"])
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions) or len(set(fractions)) != len(fractions):
        raise ValueError(f"fractions must be distinct label fractions in (0, 1], got {study['fractions']}")
    study["fractions"] = fractions
    seeds = study["seeds"]
    seeds = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a positive count or a list of distinct integers, got {study['seeds']}")
    study["seeds"] = seeds
    if int(study["workers"]) < 1:
        raise ValueError(f"workers must be at least 1, got {study['workers']}")
    study["workers"] = int(study["workers"])
    study["devices"] = [str(d) for d in (study["devices"] or [])]
    return study


@dataclass(frozen=True)
class PretrainRun:
    """One pre-training of one initialisation with one seed."""

    initialisation: Initialisation
    seed: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.initialisation.name, self.seed)

    @property
    def label(self) -> str:
        return f"pre-train {self.initialisation.name} seed {self.seed}"

    def run_dir(self, root: Path) -> Path:
        return root / "pretrain" / self.initialisation.name / f"seed{self.seed}"


@dataclass(frozen=True)
class FinetuneRun:
    """One fine-tuning (and test-split evaluation) of one initialisation at one label fraction with one seed."""

    task: str
    initialisation: Initialisation
    fraction: float
    seed: int
    pretrain: PretrainRun | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.initialisation.name, self.fraction, self.seed)

    @property
    def label(self) -> str:
        return f"fine-tune {self.initialisation.name} fraction {self.fraction:g} seed {self.seed}"

    def run_dir(self, root: Path) -> Path:
        return root / self.task / self.initialisation.name / f"fraction{self.fraction:g}" / f"seed{self.seed}"


def plan_runs(study: Mapping[str, Any]) -> tuple[list[PretrainRun], list[FinetuneRun]]:
    """Every pre-training and fine-tuning of a study, in the order they run: the pre-trainings seed by seed,
    then the fine-tunings seed by seed, smallest fraction first (so a partial study covers every initialisation
    early)."""
    pretrains = {
        (init.name, seed): PretrainRun(init, seed)
        for seed in study["seeds"]
        for init in study["initialisations"]
        if init.pretrain_overrides is not None
    }
    finetunes = [
        FinetuneRun(study["task"], init, fraction, seed, pretrains.get((init.name, seed)))
        for seed in study["seeds"]
        for fraction in study["fractions"]
        for init in study["initialisations"]
    ]
    return list(pretrains.values()), finetunes


def cli_value(value: Any) -> str:
    """A value as the bundle command line reads it: strings as they are, anything else as a Python literal
    (``True``, ``[32, 32, 32]``; the command line parses them with Python's rules, so JSON's ``true`` would be a
    string). ``None`` becomes the expression ``$None``: the command line drops a plain ``None``, which
    would leave the config's default in place."""
    if isinstance(value, str):
        return value
    if value is None:
        return "$None"
    text = json.dumps(value)  # lists of paths and numbers read more easily in JSON, where it means the same
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError):
        same = False
    return text if same else repr(value)


def bundle_command(
    python: str,
    bundle_dir: Path,
    configs: Sequence[str],
    bundle_root: Path,
    overrides: Mapping[str, Any],
) -> list[str]:
    """``python -m monai.bundle run`` with the bundle's config files and ``--key value`` overrides.

    Args:
        python: the interpreter.
        bundle_dir: the bundle folder (``configs/metadata.json`` in it is the meta file).
        configs: config file names relative to ``bundle_dir/configs``, or absolute paths.
        bundle_root: the run's folder (models, checkpoints and evaluation files go there).
        overrides: further ``--key value`` pairs, values as :func:`cli_value` writes them.
    """
    files = [str(Path(c) if Path(c).is_absolute() else bundle_dir / "configs" / c) for c in configs]
    command = [python, "-m", "monai.bundle", "run", "--config_file", cli_value(files)]
    command += ["--meta_file", str(bundle_dir / "configs" / "metadata.json"), "--bundle_root", str(bundle_root)]
    for key, value in overrides.items():
        command += [f"--{key}", cli_value(value)]
    return command


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def read_run_metrics(task: str, eval_dir: str | os.PathLike) -> dict[str, float]:
    """The test-split metrics a downstream evaluation wrote to ``eval_dir``.

    Segmentation: ``metrics_summary.json`` (``BratsEvaluationSaver``): the mean over cases of Dice and HD95 per
    region, and ``dice_mean``, the mean of the three regions' Dice. Classification: ``metrics.json``
    (``ClassificationReportWriter``). Both add ``test_cases``.

    Raises:
        FileNotFoundError: the evaluation wrote no report.
    """
    eval_dir = Path(eval_dir)
    if task == "segmentation":
        path = eval_dir / "metrics_summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"no segmentation evaluation report {path}")
        report = json.loads(path.read_text())
        metrics = {f"{m.lower()}_{r.lower()}": report["metrics"][f"{m}_{r}"]["mean"] for m in ("Dice", "HD95")
                   for r in ("TC", "WT", "ET")}  # fmt: skip
        metrics["dice_mean"] = float(np.mean([metrics["dice_tc"], metrics["dice_wt"], metrics["dice_et"]]))
        metrics["test_cases"] = int(report["num_cases"])
        return metrics
    path = eval_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"no classification evaluation report {path}")
    report = json.loads(path.read_text())
    metrics = {k: _float(report.get(k)) for k in TASKS["classification"].metrics}
    metrics["test_cases"] = int(report.get("num_cases", 0))
    return metrics
