"""Label-efficiency study results: :class:`ResultsFile` appends one row per finished fine-tuning to ``results.csv``
(atomically, under a lock); :func:`summarise`, :func:`results_table` and :func:`plot_label_efficiency` turn the rows
into the mean and standard deviation over seeds, a markdown table and the figure."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from brainmvp_components.studies.label_efficiency import TASKS
from brainmvp_components.utils.writers import atomic_write, atomic_write_text

__all__ = ["ResultsFile", "plot_label_efficiency", "results_table", "summarise", "write_results_table"]


RUN_COLUMNS: tuple[str, ...] = ("initialisation", "fraction", "seed")
TAIL_COLUMNS: tuple[str, ...] = (
    "test_cases", "training_cases", "seconds", "pretrain_seconds", "finished", "command",
)  # fmt: skip


class ResultsFile:
    """``results.csv`` of a study: one row per finished fine-tuning, columns :data:`RUN_COLUMNS`, the task's
    metrics, then :data:`TAIL_COLUMNS` (wall time of the fine-tuning and evaluation, of the pre-training it
    started from, the UTC finish time, and the exact commands).

    :meth:`append` rewrites the file atomically under an exclusive lock (``.results.csv.lock``), so rows are
    never half written, and several runners may share one study folder.
    """

    def __init__(self, path: str | os.PathLike, task: str) -> None:
        self.path = Path(path)
        self.columns: tuple[str, ...] = (*RUN_COLUMNS, *TASKS[task].metrics, *TAIL_COLUMNS)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{self.path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_text(self) -> str:
        return self.path.read_text() if self.path.is_file() else ""

    def rows(self) -> list[dict[str, Any]]:
        """The rows, with ``fraction`` and the metrics as floats and ``seed`` as an int.

        Raises:
            ValueError: the file's header is not this task's.
        """
        text = self._read_text()
        if not text.strip():
            return []
        reader = csv.DictReader(io.StringIO(text))
        if tuple(reader.fieldnames or ()) != self.columns:
            raise ValueError(
                f"{self.path} has columns {reader.fieldnames}, not those of this task {list(self.columns)}: "
                "use another output folder for another task"
            )
        rows = []
        for row in reader:
            parsed: dict[str, Any] = dict(row)
            parsed["fraction"], parsed["seed"] = float(row["fraction"]), int(row["seed"])
            for key in self.columns[len(RUN_COLUMNS) : -len(TAIL_COLUMNS)]:
                parsed[key] = float(row[key]) if row[key] not in ("", None) else float("nan")
            rows.append(parsed)
        return rows

    def finished(self) -> set[tuple[str, float, int]]:
        """``(initialisation, fraction, seed)`` of the recorded runs."""
        return {(r["initialisation"], r["fraction"], r["seed"]) for r in self.rows()}

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row (a mapping over :attr:`columns`) atomically.

        Raises:
            ValueError: the row lacks a column, or the file already holds its run.
        """
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"results row lacks column(s) {missing}")
        with self._locked():
            key = (row["initialisation"], float(row["fraction"]), int(row["seed"]))
            if key in self.finished():
                raise ValueError(f"{self.path} already records run {key}")
            text = self._read_text()
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(self.columns), lineterminator="\n", extrasaction="ignore")
            if not text.strip():
                writer.writeheader()
            elif not text.endswith("\n"):
                text += "\n"
            writer.writerow(row)
            atomic_write_text(self.path, text + buffer.getvalue())


def summarise(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, dict[float, tuple[float, float, int]]]:
    """``{initialisation: {fraction: (mean, std, n)}}`` of ``metric`` over seeds; the sample standard deviation
    (0 for one seed); non-finite values (an HD95 with an empty prediction) are left out of both."""
    grouped: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        grouped.setdefault(row["initialisation"], {}).setdefault(float(row["fraction"]), []).append(float(row[metric]))
    summary: dict[str, dict[float, tuple[float, float, int]]] = {}
    for init, by_fraction in grouped.items():
        summary[init] = {}
        for fraction, values in sorted(by_fraction.items()):
            finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
            if finite.size == 0:
                summary[init][fraction] = (float("nan"), float("nan"), 0)
                continue
            std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
            summary[init][fraction] = (float(finite.mean()), std, int(finite.size))
    return summary


def _ordered(summary: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    return [n for n in order if n in summary] + sorted(n for n in summary if n not in order)


def results_table(
    rows: Sequence[Mapping[str, Any]], task: str, order: Sequence[str] = (), title: str | None = None
) -> str:
    """Markdown: for each of the task's metrics, a table of mean ± standard deviation over seeds, one row per
    initialisation, one column per label fraction (``n`` in brackets where fewer seeds finished than elsewhere)."""
    spec = TASKS[task]
    lines = [f"# {title or f'Label efficiency: {task}'}", ""]
    if not rows:
        return "\n".join([*lines, "No finished runs yet.", ""])
    fractions = sorted({float(r["fraction"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    lines += [
        f"Test split, mean ± standard deviation over seeds ({len(seeds)} seed(s): {', '.join(map(str, seeds))}); "
        f"{len(rows)} run(s) from results.csv.",
        "",
    ]
    for metric in spec.metrics:
        summary = summarise(rows, metric)
        most = max((n for by in summary.values() for _, _, n in by.values()), default=0)
        lines += [f"## {spec.labels[metric]}", ""]
        lines.append("| initialisation | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |")
        lines.append("|---|" + "---:|" * len(fractions))
        for init in _ordered(summary, order):
            cells = []
            for fraction in fractions:
                mean, std, n = summary[init].get(fraction, (float("nan"), float("nan"), 0))
                if n == 0:
                    cells.append("–")
                    continue
                cell = f"{mean:.3f}" if n == 1 else f"{mean:.3f} ± {std:.3f}"
                cells.append(cell + (f" (n={n})" if n < most else ""))
            lines.append(f"| {init} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results_table(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`results_table` to ``path`` atomically."""
    return atomic_write_text(path, results_table(*args, **kwargs))


def plot_label_efficiency(
    rows: Sequence[Mapping[str, Any]], task: str, path: str | os.PathLike, order: Sequence[str] = ()
) -> Path:
    """The label-efficiency figure (as the paper's Figure 3): one panel per plotted metric of the task, the
    metric against the label fraction, one line per initialisation (mean over seeds, shaded ± one standard
    deviation). Written atomically; returns the path.

    Raises:
        ValueError: no rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no finished runs to plot")
    spec = TASKS[task]
    fractions = sorted({float(r["fraction"]) for r in rows})
    metrics = spec.plot_metrics
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        summary = summarise(rows, metric)
        for init in _ordered(summary, order):
            points = sorted((f, m, s) for f, (m, s, n) in summary[init].items() if n > 0)
            if not points:
                continue
            x, mean, std = (np.array(v, dtype=float) for v in zip(*points))
            (line,) = ax.plot(x * 100, mean, marker="o", label=init)
            ax.fill_between(x * 100, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xticks([f * 100 for f in fractions])
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("labelled training cases (%)")
        ax.set_ylabel(spec.labels[metric])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    seeds = len({int(r["seed"]) for r in rows})
    fig.suptitle(f"Label efficiency ({task}, test split, mean ± std over {seeds} seed(s))")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), suffix=".png")
    finally:
        plt.close(fig)
