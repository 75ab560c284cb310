"""Label-efficiency study: pre-train, fine-tune at several label fractions and seeds, evaluate, plot.

For every initialisation of the study (``scratch``, ``mae``, ``brainmvp``, ``brainmvp-no-md``, ``brainmvp-no-cmr``,
``brainmvp-no-cl``) and seed, the pre-training bundle runs once with that initialisation's overrides; then, for
every label fraction, the segmentation bundle (or, with ``--task classification``, the classification bundle)
fine-tunes from the pre-trained encoder and evaluates its best model on the data set's test split. Every step is
a ``python -m monai.bundle run``. Each finished fine-tuning adds one row to ``OUT/<task>/results.csv``; the end
of every invocation rewrites ``label_efficiency.png`` and ``results.md`` (mean ± standard deviation over seeds)
beside it.

    python scripts/label_efficiency.py --config scripts/studies/cpu_small.yaml --workers 2
    python scripts/label_efficiency.py --config study.yaml --devices 0,1,2,3     # one GPU per worker
    python scripts/label_efficiency.py --config study.yaml --report-only         # figure and table only

Run it again and it skips what is finished: recorded fine-tunings and completed pre-trainings. A run that was
killed is started over in a clean folder (``continue_interrupted: true`` lets the bundles resume from their
checkpoints instead). Logs of every bundle run are in its folder (``train.log``, ``evaluate.log``). Exit status:
0 when every run finished, 1 when some failed, 2 for an unusable study file, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
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
    TASKS,
    FinetuneRun,
    PretrainRun,
    bundle_command,
    load_study,
    plan_runs,
    read_run_metrics,
)
from brainmvp_components.studies.results import ResultsFile, plot_label_efficiency, write_results_table
from brainmvp_components.utils.writers import write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "scripts" / "studies" / "default.yaml"
DONE_FILE = "done.json"
logger = logging.getLogger("label_efficiency")


class RunFailed(RuntimeError):
    """A bundle run exited with an error; the message names its log."""


class Interrupted(RuntimeError):
    """The study was interrupted while this run was going."""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


class Study:
    """One invocation of a study: its data, its runs, and how each of them is executed."""

    def __init__(self, settings: dict[str, Any], output_dir: Path, python: str = sys.executable) -> None:
        self.settings = settings
        self.task: str = settings["task"]
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
        ``create``), with the study's label fractions.

        Raises:
            ValueError: the datalist lacks a label fraction, or a downstream datalist has no test split.
        """
        settings = self.settings[stage]
        if settings.get("datalist"):
            path = str(settings["datalist"])
        else:
            cohort = dict(settings.get("cohort") or {})
            folder = self.root / "data" / COHORT_KINDS[stage]
            if not create:
                return str(folder / "datalist.json")
            extra = (
                {"label_fractions": [f for f in self.settings["fractions"] if f < 1.0]} if stage != "pretrain" else {}
            )
            path = ensure_datalist(
                folder,
                COHORT_KINDS[stage],
                subjects=int(cohort.pop("subjects", 8)),
                seed=int(cohort.pop("seed", 0)),
                spacing=float(cohort.pop("spacing", 2.0)),
                **cohort,
                **extra,
            )
        if stage != "pretrain":
            self._check_downstream_datalist(path)
        return path

    def _check_downstream_datalist(self, path: str) -> None:
        import json
        import math

        document = json.loads(Path(path).read_text())
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
        settings = self.settings[self.task]
        models = run.pretrain.run_dir(self.root) / "models" if run.pretrain is not None else None
        use_templates = self.settings["templates"] == "pretrained" and run.initialisation.templates
        overrides = {
            "datalist": datalist,
            "label_fraction": run.fraction,
            "seed": run.seed,
            "pretrained_encoder": str(models / "encoder.pt") if models is not None else None,
            "templates_dir": str(models / "templates") if models is not None and use_templates else None,
            **settings["overrides"],
        }
        bundle = self.bundles / TASKS[self.task].bundle
        root = run.run_dir(self.root)
        configs = list(settings["configs"])
        return [
            bundle_command(self.python, bundle, configs, root, overrides),
            bundle_command(self.python, bundle, configs + list(settings["evaluate_configs"]), root, overrides),
        ]

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
        return f"in {_duration(seconds)}"

    def run_finetune(self, run: FinetuneRun, env: dict[str, str]) -> str:
        run_dir = run.run_dir(self.root)
        self._fresh_dir(run_dir)
        datalist = self.datalist(self.task)
        train, evaluate = self.finetune_commands(run, datalist)
        start = time.monotonic()
        self._execute(train, run_dir / "train.log", env)
        self._execute(evaluate, run_dir / "evaluate.log", env)
        seconds = time.monotonic() - start
        metrics = read_run_metrics(self.task, run_dir / "eval")
        pretrain_seconds = float("nan")
        if run.pretrain is not None:
            import json

            pretrain_seconds = json.loads((run.pretrain.run_dir(self.root) / DONE_FILE).read_text())["seconds"]
        prefix = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if "CUDA_VISIBLE_DEVICES" in env else ""
        row = {
            "initialisation": run.initialisation.name,
            "fraction": run.fraction,
            "seed": run.seed,
            **metrics,
            "training_cases": len(load_datalist(datalist, "training", run.fraction)),
            "seconds": round(seconds, 1),
            "pretrain_seconds": round(pretrain_seconds, 1),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": prefix + " && ".join(shlex.join(c) for c in (train, evaluate)),
        }
        self.results.append(row)
        shown = TASKS[self.task].plot_metrics[0]
        return f"in {_duration(seconds)}: {TASKS[self.task].labels[shown]} {metrics[shown]:.3f}"

    def changed_runs(self, pretrains: Sequence[PretrainRun], finetunes: Sequence[FinetuneRun]) -> list[str]:
        """Warnings for finished runs whose recorded commands differ from those the study gives now (an edited
        study file): they are kept, not run again, so the report would mix settings."""
        datalists = {stage: self.datalist(stage, create=False) for stage in ("pretrain", self.task)}
        warnings = []
        for run in pretrains:
            done = run.run_dir(self.root) / DONE_FILE
            if done.is_file():
                import json

                (command,) = self.pretrain_commands(run, datalists["pretrain"])
                if json.loads(done.read_text()).get("command") != shlex.join(command):
                    warnings.append(f"{run.label} finished with other settings than the study's now ({done})")
        recorded = {(r["initialisation"], r["fraction"], r["seed"]): r["command"] for r in self.results.rows()}
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
        written = [write_results_table(folder / "results.md", rows, self.task, order=self.order)]
        if rows:
            written.append(plot_label_efficiency(rows, self.task, folder / "label_efficiency.png", order=self.order))
        return written


class Progress:
    """Run ``k`` of ``N``, the time elapsed and an estimate of the time left (mean duration of each kind of run
    so far, times the runs of that kind still to go, over the workers)."""

    def __init__(self, runs: Sequence[Any], workers: int) -> None:
        self.total = len(runs)
        self.pending = {id(r): type(r).__name__ for r in runs}
        self.durations: dict[str, list[float]] = {}
        self.workers = workers
        self.started = 0
        self.start = time.monotonic()
        self.lock = threading.Lock()

    def begin(self, run: Any) -> int:
        with self.lock:
            self.started += 1
            return self.started

    def end(self, run: Any, seconds: float | None) -> str:
        with self.lock:
            kind = self.pending.pop(id(run))
            if seconds is not None:
                self.durations.setdefault(kind, []).append(seconds)
            elapsed = time.monotonic() - self.start
            every = [s for values in self.durations.values() for s in values]
            if not self.pending:
                return f"elapsed {_duration(elapsed)}"
            if not every:
                return f"elapsed {_duration(elapsed)}, time left unknown"
            left = 0.0
            for pending_kind in self.pending.values():
                known = self.durations.get(pending_kind) or every
                left += sum(known) / len(known)
            left /= min(self.workers, len(self.pending))
            return f"elapsed {_duration(elapsed)}, about {_duration(left)} left"


def schedule(
    study: Study,
    runs: Sequence[PretrainRun | FinetuneRun],
    workers: int,
    devices: Sequence[str],
    say: Callable[[str], None] = print,
) -> list[tuple[Any, str]]:
    """Run ``runs`` on ``workers`` threads, each starting its bundle runs as subprocesses (worker ``i`` with
    ``CUDA_VISIBLE_DEVICES=devices[i]`` when devices are given). A fine-tuning waits for its pre-training; one
    whose pre-training failed is not started. Returns the failures as ``(run, reason)``."""
    pending = list(runs)
    finished: set[int] = set()
    failed: dict[int, str] = {}
    failures: list[tuple[Any, str]] = []
    condition = threading.Condition()
    progress = Progress(runs, workers)

    def dependency(run: Any) -> PretrainRun | None:
        pretrain = getattr(run, "pretrain", None)
        return pretrain if any(pretrain is r for r in runs) else None

    def next_run() -> Any | None:
        with condition:
            while True:
                if study.stopping.is_set():
                    return None
                for run in pending:
                    before = dependency(run)
                    if before is None or id(before) in finished or id(before) in failed:
                        pending.remove(run)
                        return run
                if not pending:
                    return None
                condition.wait()

    def worker(index: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
        while (run := next_run()) is not None:
            before = dependency(run)
            k = progress.begin(run)
            start = time.monotonic()
            outcome: str | None = None
            try:
                if before is not None and id(before) in failed:
                    raise RunFailed(f"its pre-training failed ({before.label})")
                say(
                    f"[run {k} of {progress.total}] {run.label}: started"
                    + (f" on worker {index}" if workers > 1 else "")
                )
                if isinstance(run, PretrainRun):
                    message = study.run_pretrain(run, env)
                else:
                    message = study.run_finetune(run, env)
                seconds: float | None = time.monotonic() - start
            except Interrupted:
                outcome, seconds, message = "interrupted", None, "interrupted"
            except Exception as e:  # a failed run is reported and the others go on
                outcome, seconds, message = str(e), None, f"FAILED: {e}"
            with condition:
                if outcome:
                    failed[id(run)] = outcome
                else:
                    finished.add(id(run))
                if outcome and outcome != "interrupted":
                    failures.append((run, outcome))
                condition.notify_all()
            say(f"[run {k} of {progress.total}] {run.label}: {message}; {progress.end(run, seconds)}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        say("interrupted: stopping the bundle runs in flight (they start over next time)")
        study.stop()
        with condition:
            condition.notify_all()
        for thread in threads:
            thread.join()
        raise
    return failures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="study file, YAML or JSON (default %(default)s)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="study folder (default: the file's output_dir, relative to the current directory)",
    )
    parser.add_argument("--task", choices=sorted(TASKS), default=None, help="downstream task (default: the file's)")
    parser.add_argument("--workers", type=int, default=None, help="runs at a time (default: the file's)")
    parser.add_argument(
        "--devices", default=None, help="comma-separated CUDA devices, one per worker, e.g. 0,1 (default: the file's)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the runs still to do and their commands")
    parser.add_argument("--report-only", action="store_true", help="rewrite the figure and table from results.csv")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    devices = None if args.devices is None else [d.strip() for d in args.devices.split(",") if d.strip()]
    try:
        settings = load_study(args.config, task=args.task, workers=args.workers, devices=devices)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 2
    study = Study(settings, args.output_dir or Path(settings["output_dir"]))
    if args.report_only:
        for path in study.write_report():
            print(f"wrote {path}")
        return 0

    pretrains, finetunes = plan_runs(settings)
    done = study.results.finished()
    for warning in study.changed_runs(pretrains, finetunes):
        logger.warning("%s", warning)
    finetunes = [r for r in finetunes if r.key not in done]
    needed = {id(r.pretrain) for r in finetunes if r.pretrain is not None}
    pretrains = [r for r in pretrains if id(r) in needed and not study.pretrain_done(r)]
    runs: list[PretrainRun | FinetuneRun] = [*pretrains, *finetunes]
    planned = len(settings["initialisations"]) * len(settings["fractions"]) * len(settings["seeds"])
    print(
        f"label-efficiency study ({study.task}) in {study.root}: {planned} fine-tuning(s) planned, "
        f"{len(done)} recorded; to run now: {len(pretrains)} pre-training(s), {len(finetunes)} fine-tuning(s)"
    )
    if args.dry_run:
        datalists = {stage: study.datalist(stage, create=False) for stage in ("pretrain", study.task)}
        for run in runs:
            if isinstance(run, PretrainRun):
                commands = study.pretrain_commands(run, datalists["pretrain"])
            else:
                commands = study.finetune_commands(run, datalists[study.task])
            print(f"{run.label}:\n  " + "\n  ".join(shlex.join(c) for c in commands))
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
        failures = schedule(study, runs, settings["workers"], settings["devices"])
    except KeyboardInterrupt:
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    for path in study.write_report():
        print(f"wrote {path}")
    for run, reason in failures:
        print(f"failed: {run.label}: {reason.splitlines()[0]}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
