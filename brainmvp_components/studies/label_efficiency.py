"""Label-efficiency studies: the study definition, its runs, the results file and the report.

A study compares initialisations of the downstream encoder (training from scratch, a masked-image-modelling
baseline, BrainMVP and its ablations) at several amounts of training labels (fractions of the training split, or
absolute numbers of labelled cases), with the encoder fine-tuned or frozen, and several seeds, as the paper's
label-efficiency figure does. With ``sites`` the data come from several acquisition sites: the encoders
pre-train on an unlabelled multi-site pool, the labelled cases come from one site, and every fine-tuning is
tested on held-out cases of that site (``in``) and of another (``out``). Every pre-training and every
fine-tuning is a ``python -m monai.bundle run`` of the project's bundles with configuration overrides
(:mod:`brainmvp_components.studies.runner` runs them); this module holds the study's definition:

- :func:`load_study` reads and checks a study file (YAML or JSON) over :data:`DEFAULT_STUDY`;
- :func:`plan_runs` lists the pre-trainings and fine-tunings, :func:`bundle_command` builds their command lines;
- :mod:`brainmvp_components.studies.site_splits` writes the labelled sets and test splits of a site study;
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
    "ENCODER_USES",
    "INITIALISATIONS",
    "TASKS",
    "TEST_SITES",
    "Initialisation",
    "TaskSpec",
    "PretrainRun",
    "FinetuneRun",
    "load_study",
    "plan_runs",
    "run_order",
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

ENCODER_USES: dict[str, dict[str, Any]] = {"finetune": {}, "frozen": {"freeze_encoder": True}}
"""How the downstream training uses the encoder, and the bundle overrides that make it so: every weight trains
(``finetune``), or the encoder is frozen (``frozen``: linear probing for classification, a decoder on frozen
features for segmentation)."""

TEST_SITES: dict[str, str] = {"in": "test", "out": "test_out"}
"""Test splits of a study's datalist: ``in``, held-out cases like the labelled ones (the ``test`` split);
``out``, cases of a site none of the labelled cases comes from (``test_out``; site studies only)."""

_STAGE_DEFAULTS: dict[str, Any] = {
    "datalist": None, "cohort": {}, "configs": ["train.json"], "overrides": {}, "frozen_overrides": {},
}  # fmt: skip

DEFAULT_STUDY: dict[str, Any] = {
    "output_dir": "label_efficiency",
    "task": "segmentation",
    "initialisations": list(INITIALISATIONS),
    "extra_initialisations": {},
    "fractions": [0.1, 0.2, 0.4, 1.0],
    "labelled_cases": None,
    "encoders": ["finetune"],
    "frozen_at": None,
    "only_at": {},
    "sites": None,
    "seeds": 3,
    "pretrain_seeds": None,
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
SITE_DEFAULTS: dict[str, Any] = {
    "pool": ["A", "B", "C", "D"],
    "missing_rate": 0.1,
    "labelled": "A",
    "out_of_site": "D",
    "validation": 4,
    "test": 8,
}
"""``sites`` of a site study, when given: the pre-training pool's sites (round-robin) and modality drop rate, the
labelled site, the out-of-site test site, and the held-out validation and test cases per site (per class for
classification)."""

"""The study when a study file says nothing else (``scripts/studies/default.yaml`` spells it out): the issue's
design (label fractions 0.1, 0.2, 0.4 and 1.0, three seeds, every built-in initialisation) at the bundles' full
settings on the embedded cohorts. Stage settings: ``datalist`` (``None``: generate the embedded cohort with
``cohort``), ``configs`` (the bundle's config files, names relative to its ``configs`` folder, later ones
overriding earlier ones), ``overrides`` (``--key value`` pairs for every run of the stage) and, downstream,
``evaluate_configs`` (added to ``configs`` for the test-split evaluation) and ``frozen_overrides`` (added for
runs with a frozen encoder).

The labels: ``fractions`` of the datalist's training split, unless ``labelled_cases`` gives absolute numbers
(a list, or a mapping task -> list; per class for classification), which needs ``sites`` or a datalist with one
``datalist_labelled<n>.json`` per number beside it. ``encoders``: ``finetune`` and/or ``frozen``;
``frozen_at``: the label amounts of the frozen runs (``None``: all). ``only_at``: initialisation -> the label
amounts it runs at (the ablations at one amount; an empty list leaves it out). Both may also be given per task
(a mapping task -> setting), as ``labelled_cases`` may. ``pretrain_seeds``: the seeds the pre-trainings run with
(a count or a list; ``None``: one pre-training per fine-tuning seed); a fine-tuning seed without a pre-training of
its own starts from the first of them, so seeds vary the fine-tuning alone. ``sites``: ``None`` for one cohort, else
a mapping over :data:`SITE_DEFAULTS`."""

COHORT_KINDS: dict[str, str] = {"pretrain": "pretrain", "segmentation": "brats", "classification": "adni"}
"""The embedded cohort of each stage."""

TEMPLATE_CHOICES: tuple[str, ...] = ("pretrained", "none")


def _merge(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if (
            isinstance(value, Mapping)
            and isinstance(out.get(key), dict)
            and key not in ("overrides", "frozen_overrides")
        ):
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
    study["labelled_cases"] = _labelled_cases(study)
    encoders = list(study["encoders"])
    if not encoders or any(e not in ENCODER_USES for e in encoders) or len(set(encoders)) != len(encoders):
        raise ValueError(f"encoders must be distinct names among {list(ENCODER_USES)}, got {study['encoders']}")
    study["encoders"] = encoders
    amounts = label_amounts(study)
    for key in ("frozen_at", "only_at"):  # either for every task, or a mapping task -> setting
        value = study[key]
        if isinstance(value, Mapping) and value and set(value) <= set(TASKS):
            study[key] = value.get(study["task"], DEFAULT_STUDY[key])
    if study["frozen_at"] is not None:
        study["frozen_at"] = sorted(float(a) for a in study["frozen_at"])
        if any(a not in amounts for a in study["frozen_at"]):
            raise ValueError(f"frozen_at {study['frozen_at']} names label amounts the study lacks ({amounts})")
    only_at = {str(k): sorted(float(a) for a in v) for k, v in (study["only_at"] or {}).items()}
    for name, chosen in only_at.items():
        if name not in names or any(a not in amounts for a in chosen):
            raise ValueError(f"only_at {name!r}: {chosen} must name a study initialisation and label amounts {amounts}")
    study["only_at"] = only_at
    if study["sites"] is not None:
        unknown = sorted(set(study["sites"]) - set(SITE_DEFAULTS))
        if unknown:
            raise ValueError(f"sites: unknown setting(s) {unknown}; known: {sorted(SITE_DEFAULTS)}")
        study["sites"] = {**SITE_DEFAULTS, **study["sites"]}
        if study["labelled_cases"] is None:
            raise ValueError("a study with sites gives labelled_cases (numbers of labelled cases of the site)")
        if study["sites"]["labelled"] == study["sites"]["out_of_site"]:
            raise ValueError("sites: the out-of-site test site must differ from the labelled site")
    elif study["labelled_cases"] is not None and study[study["task"]].get("datalist") is None:
        raise ValueError("labelled_cases needs sites (or a datalist with datalist_labelled<n>.json beside it)")
    seeds = study["seeds"]
    seeds = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a positive count or a list of distinct integers, got {study['seeds']}")
    study["seeds"] = seeds
    pretrain_seeds = study["pretrain_seeds"]
    if pretrain_seeds is None:
        pretrain_seeds = seeds
    elif isinstance(pretrain_seeds, int):
        pretrain_seeds = seeds[: int(pretrain_seeds)]
    pretrain_seeds = [int(s) for s in pretrain_seeds]
    if not pretrain_seeds or len(set(pretrain_seeds)) != len(pretrain_seeds):
        raise ValueError(f"pretrain_seeds must be a positive count or distinct seeds, got {study['pretrain_seeds']}")
    study["pretrain_seeds"] = pretrain_seeds
    if int(study["workers"]) < 1:
        raise ValueError(f"workers must be at least 1, got {study['workers']}")
    study["workers"] = int(study["workers"])
    study["devices"] = [str(d) for d in (study["devices"] or [])]
    return study


def _labelled_cases(study: Mapping[str, Any]) -> list[int] | None:
    value = study["labelled_cases"]
    if isinstance(value, Mapping):
        value = value.get(study["task"])
    if value is None:
        return None
    counts = sorted(int(c) for c in value)
    if not counts or counts[0] < 1 or len(set(counts)) != len(counts):
        raise ValueError(f"labelled_cases must be distinct positive numbers, got {value}")
    return counts


def label_amounts(study: Mapping[str, Any]) -> list[float]:
    """The label amounts a study trains with: its ``labelled_cases`` (as floats) or its ``fractions``."""
    counts = study["labelled_cases"]
    return [float(c) for c in counts] if counts is not None else list(study["fractions"])


def label_unit(study: Mapping[str, Any]) -> str:
    """``cases`` (``labelled_cases``; per class for classification) or ``fraction``."""
    if study["labelled_cases"] is None:
        return "fraction"
    return "cases per class" if study["task"] == "classification" else "cases"


def test_sites(study: Mapping[str, Any]) -> list[str]:
    """The test splits every fine-tuning is evaluated on (keys of :data:`TEST_SITES`)."""
    return ["in", "out"] if study["sites"] is not None else ["in"]


def amount_name(amount: float, unit: str) -> str:
    """A label amount in run labels and folder names: ``labelled4`` or ``fraction0.2``."""
    return f"labelled{int(amount)}" if unit != "fraction" else f"fraction{amount:g}"


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
    """One downstream training (and its test evaluations) of one initialisation at one label amount (a fraction
    or a number of labelled cases, as ``unit`` says), with the encoder fine-tuned or frozen, with one seed."""

    task: str
    initialisation: Initialisation
    labelled: float
    seed: int
    pretrain: PretrainRun | None = field(default=None, compare=False)
    encoder: str = "finetune"
    unit: str = "fraction"

    @property
    def key(self) -> tuple[str, float, str, int]:
        return (self.initialisation.name, self.labelled, self.encoder, self.seed)

    @property
    def fraction(self) -> float | None:
        """The label fraction of a fraction study (``None`` for labelled-case counts)."""
        return self.labelled if self.unit == "fraction" else None

    @property
    def label(self) -> str:
        count = int(self.labelled)
        amount = f"{count} labelled case{'' if count == 1 else 's'}{' per class' * (self.unit == 'cases per class')}"
        amount = f"fraction {self.labelled:g}" if self.unit == "fraction" else amount
        encoder = ", encoder frozen" if self.encoder == "frozen" else ""
        return f"fine-tune {self.initialisation.name} {amount}{encoder} seed {self.seed}"

    def run_dir(self, root: Path) -> Path:
        amount = amount_name(self.labelled, self.unit)
        return root / self.task / self.initialisation.name / amount / self.encoder / f"seed{self.seed}"


def plan_runs(study: Mapping[str, Any]) -> tuple[list[PretrainRun], list[FinetuneRun]]:
    """Every pre-training and fine-tuning of a study, in the order they run: the pre-trainings seed by seed,
    then the fine-tunings seed by seed, smallest label amount first (so a partial study covers every
    initialisation early). An initialisation in ``only_at`` runs at those amounts only; frozen runs at
    ``frozen_at`` only."""
    pretrain_seeds = study.get("pretrain_seeds") or study["seeds"]
    pretrains = {
        (init.name, seed): PretrainRun(init, seed)
        for seed in pretrain_seeds
        for init in study["initialisations"]
        if init.pretrain_overrides is not None
    }

    def pretrain_of(init: Initialisation, seed: int) -> PretrainRun | None:
        return pretrains.get((init.name, seed if seed in pretrain_seeds else pretrain_seeds[0]))

    unit = label_unit(study)
    finetunes = [
        FinetuneRun(study["task"], init, amount, seed, pretrain_of(init, seed), encoder, unit)
        for seed in study["seeds"]
        for amount in label_amounts(study)
        for encoder in study["encoders"]
        for init in study["initialisations"]
        if amount in study["only_at"].get(init.name, [amount])
        and (encoder != "frozen" or study["frozen_at"] is None or amount in study["frozen_at"])
    ]
    return list(pretrains.values()), finetunes


def run_order(
    pretrains: Sequence[PretrainRun], finetunes: Sequence[FinetuneRun], only_at: Mapping[str, Any]
) -> list[PretrainRun | FinetuneRun]:
    """The runs in the order a study starts them: seed by seed, and within a seed the initialisations that run at
    every label amount before those restricted by ``only_at`` (the ablations), pre-trainings before their
    fine-tunings. A study stopped part-way then holds complete comparisons for its first seeds."""

    def key(run: PretrainRun | FinetuneRun) -> tuple[int, bool, bool]:
        return run.seed, run.initialisation.name in only_at, isinstance(run, FinetuneRun)

    return sorted([*pretrains, *finetunes], key=key)  # stable: plan_runs' order within a key


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
