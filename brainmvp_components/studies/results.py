"""Label-efficiency study results: :class:`ResultsFile` appends the rows of each finished fine-tuning to
``results.csv`` (atomically, under a lock); :func:`summarise`, :func:`results_table` and
:func:`plot_label_efficiency` turn the rows into the mean and standard deviation over seeds, a markdown table and
the figure (one panel per metric and test site)."""

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

__all__ = ["ResultsFile", "line_name", "plot_label_efficiency", "results_table", "summarise", "write_results_table"]


RUN_COLUMNS: tuple[str, ...] = ("initialisation", "labelled", "test_site", "encoder", "seed")
TAIL_COLUMNS: tuple[str, ...] = (
    "test_cases", "training_cases", "seconds", "pretrain_seconds", "finished", "command",
)  # fmt: skip
SITE_TITLES: dict[str, str] = {"in": "in-site test", "out": "out-of-site test"}


def _run_key(row: Mapping[str, Any]) -> tuple[str, float, str, int]:
    return (str(row["initialisation"]), float(row["labelled"]), str(row["encoder"]), int(row["seed"]))


class ResultsFile:
    """``results.csv`` of a study: one row per fine-tuning and test split, columns :data:`RUN_COLUMNS`
    (``labelled``: the label fraction or the number of labelled cases; ``test_site``: ``in`` or ``out``;
    ``encoder``: ``finetune`` or ``frozen``), the task's metrics, then :data:`TAIL_COLUMNS` (test and training
    case counts, wall time of the fine-tuning and its evaluations, of the pre-training it started from, the UTC
    finish time, and the exact commands).

    :meth:`append` adds a run's rows in one atomic rewrite under an exclusive lock (``.results.csv.lock``), so
    rows are never half written, a run is recorded with all its test splits or not at all, and several runners
    may share one study folder.
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
        """The rows, with ``labelled`` and the metrics as floats and ``seed`` as an int.

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
                "use another output folder for another task (or for a study written by an older version)"
            )
        rows = []
        for row in reader:
            parsed: dict[str, Any] = dict(row)
            parsed["labelled"], parsed["seed"] = float(row["labelled"]), int(row["seed"])
            for key in self.columns[len(RUN_COLUMNS) : -len(TAIL_COLUMNS)]:
                parsed[key] = float(row[key]) if row[key] not in ("", None) else float("nan")
            rows.append(parsed)
        return rows

    def finished(self) -> set[tuple[str, float, str, int]]:
        """``(initialisation, labelled, encoder, seed)`` of the recorded runs."""
        return {_run_key(r) for r in self.rows()}

    def append(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Add one run's rows (mappings over :attr:`columns`, one per test split) atomically.

        Raises:
            ValueError: a row lacks a column, the rows are of several runs, or the file already holds the run.
        """
        rows = [rows] if isinstance(rows, Mapping) else list(rows)
        for row in rows:
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise ValueError(f"results row lacks column(s) {missing}")
        keys = {_run_key(r) for r in rows}
        if len(keys) != 1:
            raise ValueError(f"append takes the rows of one run, got runs {sorted(keys)}")
        with self._locked():
            (key,) = keys
            if key in self.finished():
                raise ValueError(f"{self.path} already records run {key}")
            text = self._read_text()
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(self.columns), lineterminator="\n", extrasaction="ignore")
            if not text.strip():
                writer.writeheader()
            elif not text.endswith("\n"):
                text += "\n"
            writer.writerows(rows)
            atomic_write_text(self.path, text + buffer.getvalue())


def line_name(row: Mapping[str, Any]) -> str:
    """What one line of the figure (one row of a table) shows: the initialisation, ``(frozen)`` if so."""
    return str(row["initialisation"]) + (" (frozen)" if row.get("encoder", "finetune") == "frozen" else "")


def summarise(
    rows: Sequence[Mapping[str, Any]], metric: str, test_site: str | None = None
) -> dict[str, dict[float, tuple[float, float, int]]]:
    """``{line: {labelled: (mean, std, n)}}`` of ``metric`` over seeds (lines: :func:`line_name`), on the rows
    of ``test_site`` (``None``: all); the sample standard deviation (0 for one seed); non-finite values (an
    HD95 with an empty prediction) are left out of both."""
    grouped: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        if test_site is not None and row.get("test_site", "in") != test_site:
            continue
        grouped.setdefault(line_name(row), {}).setdefault(float(row["labelled"]), []).append(float(row[metric]))
    summary: dict[str, dict[float, tuple[float, float, int]]] = {}
    for line, by_amount in grouped.items():
        summary[line] = {}
        for amount, values in sorted(by_amount.items()):
            finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
            if finite.size == 0:
                summary[line][amount] = (float("nan"), float("nan"), 0)
                continue
            std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
            summary[line][amount] = (float(finite.mean()), std, int(finite.size))
    return summary


def _ordered(summary: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    lines = [f"{n}{suffix}" for suffix in ("", " (frozen)") for n in order]
    return [n for n in lines if n in summary] + sorted(n for n in summary if n not in lines)


def _amount_label(amount: float, unit: str) -> str:
    return f"{amount:.0%} labels" if unit == "fraction" else f"{int(amount)} {unit}"


def _sites(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {str(r.get("test_site", "in")) for r in rows}
    return [s for s in SITE_TITLES if s in present] + sorted(present - set(SITE_TITLES))


def results_table(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    order: Sequence[str] = (),
    title: str | None = None,
    unit: str = "fraction",
) -> str:
    """Markdown: for each of the task's metrics and test site, a table of mean ± standard deviation over seeds,
    one row per initialisation (and encoder use), one column per label amount (``n`` in brackets where fewer
    seeds finished than elsewhere). ``unit``: ``fraction``, ``cases`` or ``cases per class``."""
    spec = TASKS[task]
    lines = [f"# {title or f'Label efficiency: {task}'}", ""]
    if not rows:
        return "\n".join([*lines, "No finished runs yet.", ""])
    amounts = sorted({float(r["labelled"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    runs = len({_run_key(r) for r in rows})
    lines += [
        f"Mean ± standard deviation over seeds ({len(seeds)} seed(s): {', '.join(map(str, seeds))}); "
        f"{runs} run(s), {len(rows)} row(s) from results.csv.",
        "",
    ]
    for metric in spec.metrics:
        for site in _sites(rows):
            summary = summarise(rows, metric, site)
            most = max((n for by in summary.values() for _, _, n in by.values()), default=0)
            lines += [f"## {spec.labels[metric]}, {SITE_TITLES.get(site, site)}", ""]
            lines.append("| initialisation | " + " | ".join(_amount_label(a, unit) for a in amounts) + " |")
            lines.append("|---|" + "---:|" * len(amounts))
            for line in _ordered(summary, order):
                cells = []
                for amount in amounts:
                    mean, std, n = summary[line].get(amount, (float("nan"), float("nan"), 0))
                    if n == 0:
                        cells.append("–")
                        continue
                    cell = f"{mean:.3f}" if n == 1 else f"{mean:.3f} ± {std:.3f}"
                    cells.append(cell + (f" (n={n})" if n < most else ""))
                lines.append(f"| {line} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def write_results_table(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`results_table` to ``path`` atomically."""
    return atomic_write_text(path, results_table(*args, **kwargs))


def plot_label_efficiency(
    rows: Sequence[Mapping[str, Any]],
    task: str,
    path: str | os.PathLike,
    order: Sequence[str] = (),
    unit: str = "fraction",
) -> Path:
    """The label-efficiency figure (as the paper's Figure 3): one row of panels per test site (in-site,
    out-of-site), one panel per plotted metric of the task, the metric against the label amount, one line per
    initialisation (dashed with open squares for a frozen encoder; mean over seeds, shaded ± one standard
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
    amounts = sorted({float(r["labelled"]) for r in rows})
    scale = 100.0 if unit == "fraction" else 1.0
    metrics, sites = spec.plot_metrics, _sites(rows)
    fig, axes = plt.subplots(len(sites), len(metrics), figsize=(4.2 * len(metrics), 3.6 * len(sites)), squeeze=False)
    colours: dict[str, Any] = {}
    for row_axes, site in zip(axes, sites):
        for ax, metric in zip(row_axes, metrics):
            summary = summarise(rows, metric, site)
            for line in _ordered(summary, order):
                points = sorted((a, m, s) for a, (m, s, n) in summary[line].items() if n > 0)
                if not points:
                    continue
                x, mean, std = (np.array(v, dtype=float) for v in zip(*points))
                init = line.removesuffix(" (frozen)")
                frozen = line.endswith("(frozen)")
                (drawn,) = ax.plot(
                    x * scale, mean, "--" if frozen else "-", marker="s" if frozen else "o",
                    fillstyle="none" if frozen else "full", label=line, color=colours.get(init),
                )  # fmt: skip
                colours.setdefault(init, drawn.get_color())
                ax.fill_between(x * scale, mean - std, mean + std, color=drawn.get_color(), alpha=0.15, linewidth=0)
            if unit != "fraction" and len(amounts) > 1:
                ax.set_xscale("log", base=2)
            ax.set_xticks([a * scale for a in amounts], [f"{a * scale:g}" for a in amounts])
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_xlabel("labelled training cases (%)" if unit == "fraction" else f"labelled {unit}")
            ax.set_ylabel(spec.labels[metric])
            ax.set_title(f"{spec.labels[metric]}, {SITE_TITLES.get(site, site)}", fontsize="medium")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    seeds = len({int(r["seed"]) for r in rows})
    fig.suptitle(f"Label efficiency ({task}, mean ± std over {seeds} seed(s))")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), suffix=".png")
    finally:
        plt.close(fig)
