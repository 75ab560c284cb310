"""Running a study's pre-trainings and fine-tunings on a few worker threads, with progress and time estimates."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brainmvp_components.studies.label_efficiency import FinetuneRun, PretrainRun

__all__ = ["REPO_ROOT", "Interrupted", "Progress", "RunFailed", "duration", "schedule"]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The project folder: the bundles are in ``REPO_ROOT/bundles``, and bundle runs start there."""


class RunFailed(RuntimeError):
    """A bundle run exited with an error; the message names its log."""


class Interrupted(RuntimeError):
    """The study was interrupted while this run was going."""


def duration(seconds: float) -> str:
    """``1 h 05 min``, ``3 min 07 s`` or ``12 s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


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
                return f"elapsed {duration(elapsed)}"
            if not every:
                return f"elapsed {duration(elapsed)}, time left unknown"
            left = 0.0
            for pending_kind in self.pending.values():
                known = self.durations.get(pending_kind) or every
                left += sum(known) / len(known)
            left /= min(self.workers, len(self.pending))
            return f"elapsed {duration(elapsed)}, about {duration(left)} left"


def schedule(
    study: Any,
    runs: Sequence[PretrainRun | FinetuneRun],
    workers: int,
    devices: Sequence[str],
    say: Callable[[str], None] = print,
) -> list[tuple[Any, str]]:
    """Run ``runs`` on ``workers`` threads, each starting its bundle runs as subprocesses (worker ``i`` with
    ``CUDA_VISIBLE_DEVICES=devices[i]`` when devices are given) through ``study`` (a
    :class:`~brainmvp_components.studies.runner.Study`: ``run_pretrain``, ``run_finetune``, ``stop``,
    ``stopping``). A fine-tuning waits for its pre-training; one
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
