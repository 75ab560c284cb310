"""Executing a label-efficiency study: its data, the bundle commands of its runs, their results and the report.

:class:`Study` prepares the data (the study's datalists, or the embedded cohorts generated under ``OUT/data``;
with ``sites``, a multi-site pre-training pool and one datalist per number of labelled cases), builds every
run's ``python -m monai.bundle run`` commands, runs them and records their rows; :func:`run_study` is what
``scripts/label_efficiency.py`` calls.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from brainmvp_components.data.datalist import ensure_datalist, load_datalist
from brainmvp_components.studies.label_efficiency import (
    COHORT_KINDS,
    ENCODER_USES,
    TASKS,
    TEST_SITES,
    FinetuneRun,
    PretrainRun,
    bundle_command,
    label_amounts,
    label_unit,
    load_study,
    plan_runs,
    read_run_metrics,
    run_order,
    test_sites,
)
from brainmvp_components.studies.results import ResultsFile, plot_label_efficiency, write_results_table
from brainmvp_components.studies.scheduler import REPO_ROOT, Interrupted, RunFailed, duration, schedule
from brainmvp_components.studies.site_splits import labelled_datalist_name, site_cohort_sites, write_site_datalists
from brainmvp_components.utils.writers import write_json

__all__ = ["DONE_FILE", "Study", "run_study"]

DONE_FILE = "done.json"
EVAL_DIRS: dict[str, str] = {"in": "eval", "out": "eval_out"}
"""Where each test evaluation of a run writes (``eval`` is also where training writes its curves)."""

logger = logging.getLogger("label_efficiency")


class Study:
    """One invocation of a study: its data, its runs, and how each of them is executed."""

    def __init__(self, settings: dict[str, Any], output_dir: Path, python: str = sys.executable) -> None:
        self.settings = settings
        self.task: str = settings["task"]
        self.unit = label_unit(settings)
        self.sites = test_sites(settings)
        self.root = output_dir.resolve()
        self.python = python
        self.bundles = REPO_ROOT / "bundles"
        self.results = ResultsFile(self.root / self.task / "results.csv", self.task)
        self.order = [init.name for init in settings["initialisations"]]
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    # data ---------------------------------------------------------------------------------------------------
    def datalist(self, stage: str, create: bool = True) -> str:
        """The stage's datalist: the study's, or the embedded cohort's under ``OUT/data`` (generated when
        ``create``). Downstream: with the study's label fractions, or, for numbers of labelled cases, the
        ``datalist_labelled<n>.json`` files beside it (written for a site study).

        Raises:
            ValueError: the datalist lacks a label fraction or labelled set, or a downstream datalist has no
                test split.
        """
        settings = self.settings[stage]
        if settings.get("datalist"):
            path = str(settings["datalist"])
        else:
            folder = self.root / "data" / COHORT_KINDS[stage]
            if not create:
                return str(folder / "datalist.json")
            path = self._embedded_datalist(stage, folder)
        if stage != "pretrain":
            self._check_downstream_datalist(path)
        return path

    def _embedded_datalist(self, stage: str, folder: Path) -> str:
        cohort = dict(self.settings[stage].get("cohort") or {})
        subjects = int(cohort.pop("subjects", 8))
        seed, spacing = int(cohort.pop("seed", 0)), float(cohort.pop("spacing", 2.0))
        sites = self.settings["sites"]
        options: dict[str, Any] = {}
        if stage == "pretrain" and sites is not None:
            options = {"sites": list(sites["pool"]), "missing_rate": float(sites["missing_rate"])}
        elif sites is not None:
            classes = 2 if self.task == "classification" else 1
            amounts = label_amounts(self.settings)
            assigned = site_cohort_sites(
                sites["labelled"], sites["out_of_site"], int(max(amounts)), sites["validation"], sites["test"], classes
            )
            subjects, options = len(assigned), {"sites": assigned}
            cohort.update(val_fraction=0.0, test_fraction=0.0, label_fractions=[])
        elif stage != "pretrain":
            cohort["label_fractions"] = [f for f in self.settings["fractions"] if f < 1.0]
        path = ensure_datalist(
            folder, COHORT_KINDS[stage], subjects=subjects, seed=seed, spacing=spacing, cohort_options=options, **cohort
        )
        if stage != "pretrain" and sites is not None:
            write_site_datalists(
                path,
                sites["labelled"],
                sites["out_of_site"],
                [int(a) for a in label_amounts(self.settings)],
                sites["validation"],
                sites["test"],
                seed=seed,
            )
        return path

    def run_datalist(self, run: FinetuneRun, datalist: str) -> str:
        """The datalist a fine-tuning trains on: ``datalist`` (fractions) or its labelled set beside it."""
        if run.fraction is not None:
            return datalist
        return str(Path(datalist).parent / labelled_datalist_name(int(run.labelled)))

    def _check_downstream_datalist(self, path: str) -> None:
        document = json.loads(Path(path).read_text())
        if self.unit != "fraction":
            files = [Path(path).parent / labelled_datalist_name(int(a)) for a in label_amounts(self.settings)]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ValueError(f"labelled sets {missing} are missing (a site study writes them)")
            document = json.loads(files[0].read_text())
            needed = [TEST_SITES[s] for s in self.sites]
            if any(not document.get(split) for split in needed):
                raise ValueError(f"labelled set {files[0]} lacks one of the test splits {needed}")
            return
        available = [float(k) for k in document.get("label_fractions", {})]
        missing = [f for f in self.settings["fractions"] if f < 1.0 and not any(math.isclose(f, a) for a in available)]
        if missing:
            raise ValueError(
                f"datalist {path} has no nested subset for label fraction(s) {missing} (it has {sorted(available)}): "
                "write it with scripts/prepare_datalist.py --label-fractions "
                + ",".join(f"{f:g}" for f in self.settings["fractions"] if f < 1.0)
            )
        if not document.get("test"):
            raise ValueError(f"datalist {path} has no test split: write it with prepare_datalist.py --test-fraction")

    # commands -----------------------------------------------------------------------------------------------
    def pretrain_commands(self, run: PretrainRun, datalist: str) -> list[list[str]]:
        settings = self.settings["pretrain"]
        overrides = {"datalist": datalist, "seed": run.seed, **settings["overrides"]}
        overrides.update(run.initialisation.pretrain_overrides or {})
        bundle = self.bundles / "brainmvp_pretrain"
        return [bundle_command(self.python, bundle, settings["configs"], run.run_dir(self.root), overrides)]

    def finetune_commands(self, run: FinetuneRun, datalist: str) -> list[list[str]]:
        """The training command, then one evaluation per test site (``in`` first)."""
        settings = self.settings[self.task]
        models = run.pretrain.run_dir(self.root) / "models" if run.pretrain is not None else None
        use_templates = self.settings["templates"] == "pretrained" and run.initialisation.templates
        overrides = {
            "datalist": self.run_datalist(run, datalist),
            "label_fraction": run.fraction,
            "seed": run.seed,
            "pretrained_encoder": str(models / "encoder.pt") if models is not None else None,
            "templates_dir": str(models / "templates") if models is not None and use_templates else None,
            **settings["overrides"],
        }
        if run.encoder != "finetune":
            overrides.update({**ENCODER_USES[run.encoder], **(settings.get(f"{run.encoder}_overrides") or {})})
        bundle = self.bundles / TASKS[self.task].bundle
        root = run.run_dir(self.root)
        configs = list(settings["configs"])
        commands = [bundle_command(self.python, bundle, configs, root, overrides)]
        for site in self.sites:
            where = {} if site == "in" else {"eval_split": TEST_SITES[site], "output_dir": str(root / EVAL_DIRS[site])}
            commands.append(
                bundle_command(
                    self.python, bundle, configs + list(settings["evaluate_configs"]), root, {**overrides, **where}
                )
            )
        return commands

    # execution ----------------------------------------------------------------------------------------------
    def _execute(self, command: list[str], log: Path, env: dict[str, str]) -> None:
        if self.stopping.is_set():
            raise Interrupted("the study is stopping")
        with open(log, "w") as out:
            out.write("$ " + shlex.join(command) + "\n")
            out.flush()
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
            with self._lock:
                self._processes.add(process)
            try:
                code = process.wait()
            finally:
                with self._lock:
                    self._processes.discard(process)
        if self.stopping.is_set():
            raise Interrupted("the study is stopping")
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RunFailed(f"exit status {code}; log {log}; last lines:\n{tail}")

    def stop(self) -> None:
        """Terminate the bundle runs in flight (their folders are cleaned up on the next invocation)."""
        self.stopping.set()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def _fresh_dir(self, run_dir: Path) -> None:
        if run_dir.exists() and not self.settings["continue_interrupted"]:
            logger.info("starting %s over (an earlier invocation left it unfinished)", run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)

    def pretrain_done(self, run: PretrainRun) -> bool:
        return (run.run_dir(self.root) / DONE_FILE).is_file()

    def run_pretrain(self, run: PretrainRun, env: dict[str, str]) -> str:
        run_dir = run.run_dir(self.root)
        self._fresh_dir(run_dir)
        (command,) = self.pretrain_commands(run, self.datalist("pretrain"))
        start = time.monotonic()
        self._execute(command, run_dir / "train.log", env)
        seconds = time.monotonic() - start
        encoder = run_dir / "models" / "encoder.pt"
        if not encoder.is_file():
            raise RunFailed(f"the pre-training finished without writing {encoder}")
        write_json(
            run_dir / DONE_FILE,
            {"initialisation": run.initialisation.name, "seed": run.seed, "seconds": seconds,
             "command": shlex.join(command)},
        )  # fmt: skip
        return f"in {duration(seconds)}"

    def run_finetune(self, run: FinetuneRun, env: dict[str, str]) -> str:
        run_dir = run.run_dir(self.root)
        self._fresh_dir(run_dir)
        datalist = self.datalist(self.task)
        train, *evaluations = self.finetune_commands(run, datalist)
        start = time.monotonic()
        self._execute(train, run_dir / "train.log", env)
        for site, command in zip(self.sites, evaluations):
            self._execute(command, run_dir / f"{EVAL_DIRS[site].replace('eval', 'evaluate')}.log", env)
        seconds = time.monotonic() - start
        pretrain_seconds = float("nan")
        if run.pretrain is not None:
            pretrain_seconds = json.loads((run.pretrain.run_dir(self.root) / DONE_FILE).read_text())["seconds"]
        prefix = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if "CUDA_VISIBLE_DEVICES" in env else ""
        common = {
            "initialisation": run.initialisation.name,
            "labelled": f"{run.labelled:g}",
            "encoder": run.encoder,
            "seed": run.seed,
            "training_cases": len(load_datalist(self.run_datalist(run, datalist), "training", run.fraction)),
            "seconds": round(seconds, 1),
            "pretrain_seconds": round(pretrain_seconds, 1),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": prefix + " && ".join(shlex.join(c) for c in (train, *evaluations)),
        }
        rows = [
            {**common, "test_site": site, **read_run_metrics(self.task, run_dir / EVAL_DIRS[site])}
            for site in self.sites
        ]
        self.results.append(rows)
        shown = TASKS[self.task].plot_metrics[0]
        scores = ", ".join(f"{row['test_site']} {row[shown]:.3f}" for row in rows)
        return f"in {duration(seconds)}: {TASKS[self.task].labels[shown]} {scores}"

    def changed_runs(self, pretrains: Sequence[PretrainRun], finetunes: Sequence[FinetuneRun]) -> list[str]:
        """Warnings for finished runs whose recorded commands differ from those the study gives now (an edited
        study file): they are kept, not run again, so the report would mix settings."""
        datalists = {stage: self.datalist(stage, create=False) for stage in ("pretrain", self.task)}
        warnings = []
        for run in pretrains:
            done = run.run_dir(self.root) / DONE_FILE
            if done.is_file():
                (command,) = self.pretrain_commands(run, datalists["pretrain"])
                if json.loads(done.read_text()).get("command") != shlex.join(command):
                    warnings.append(f"{run.label} finished with other settings than the study's now ({done})")
        recorded = {
            (r["initialisation"], r["labelled"], r["encoder"], r["seed"]): r["command"] for r in self.results.rows()
        }
        for run in finetunes:
            if run.key in recorded:
                now = " && ".join(shlex.join(c) for c in self.finetune_commands(run, datalists[self.task]))
                if not recorded[run.key].endswith(now):  # a CUDA_VISIBLE_DEVICES= prefix may precede it
                    warnings.append(f"{run.label} is recorded with other settings than the study's now")
        if warnings:
            warnings.append(
                "those runs are kept and not run again: delete their rows from results.csv (and the pre-trainings' "
                f"{DONE_FILE}) to run them with the current settings"
            )
        return warnings

    def write_report(self) -> list[Path]:
        """Rewrite ``label_efficiency.png`` and ``results.md`` from ``results.csv``."""
        rows = self.results.rows()
        folder = self.results.path.parent
        written = [write_results_table(folder / "results.md", rows, self.task, order=self.order, unit=self.unit)]
        if rows:
            figure = folder / "label_efficiency.png"
            written.append(plot_label_efficiency(rows, self.task, figure, order=self.order, unit=self.unit))
        return written


def run_study(
    config: str | Path | None,
    output_dir: str | Path | None = None,
    task: str | None = None,
    workers: int | None = None,
    devices: Sequence[str] | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    say: Callable[[str], None] = print,
) -> int:
    """Run (or resume) the study of ``config``: the pre-trainings and fine-tunings not yet recorded, then the
    report. ``dry_run`` prints the runs still to do and their commands; ``report_only`` rewrites the figure and
    table. Returns the exit status: 0 when every run finished, 1 when some failed, 2 for an unusable study file
    or data, 130 when interrupted (SIGINT or SIGTERM)."""
    try:
        settings = load_study(config, task=task, workers=workers, devices=devices)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 2
    study = Study(settings, Path(output_dir or settings["output_dir"]))
    if report_only:
        for path in study.write_report():
            say(f"wrote {path}")
        return 0

    pretrains, finetunes = plan_runs(settings)
    planned = len(finetunes)
    done = study.results.finished()
    for warning in study.changed_runs(pretrains, finetunes):
        logger.warning("%s", warning)
    finetunes = [r for r in finetunes if r.key not in done]
    needed = {id(r.pretrain) for r in finetunes if r.pretrain is not None}
    pretrains = [r for r in pretrains if id(r) in needed and not study.pretrain_done(r)]
    runs = run_order(pretrains, finetunes, settings["only_at"])
    say(
        f"label-efficiency study ({study.task}) in {study.root}: {planned} fine-tuning(s) planned, "
        f"{len(done)} recorded; to run now: {len(pretrains)} pre-training(s), {len(finetunes)} fine-tuning(s)"
    )
    if dry_run:
        datalists = {stage: study.datalist(stage, create=False) for stage in ("pretrain", study.task)}
        for run in runs:
            if isinstance(run, PretrainRun):
                commands = study.pretrain_commands(run, datalists["pretrain"])
            else:
                commands = study.finetune_commands(run, datalists[study.task])
            say(f"{run.label}:\n  " + "\n  ".join(shlex.join(c) for c in commands))
        return 0
    try:
        if finetunes:  # generate (or check) the data once, before the workers start
            study.datalist(study.task)
        if pretrains:
            study.datalist("pretrain")
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 2

    def terminate(signum: int, frame: Any) -> None:  # a killed runner stops its bundle runs too
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if in_main_thread else None
    try:
        failures = schedule(study, runs, settings["workers"], settings["devices"], say=say)
    except KeyboardInterrupt:
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    for path in study.write_report():
        say(f"wrote {path}")
    for run, reason in failures:
        print(f"failed: {run.label}: {reason.splitlines()[0]}", file=sys.stderr)
    return 1 if failures else 0
