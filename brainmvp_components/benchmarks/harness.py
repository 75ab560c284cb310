"""What every benchmark measures the same way: timing, interleaved rounds, peak memory, child processes, ratios.

Nothing here imports torch at module level (the data-scale and cohort benchmarks do not need it); the functions that
take a ``device`` import it when called.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

GIB = 1024**3
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding ``brainmvp_components`` (a child process gets it on its ``PYTHONPATH``)."""

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- timing
def sync(device: Any) -> None:
    """Wait for the queued work of ``device`` (a ``torch.device``; nothing to wait for on a CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


class Timer:
    """Wall (``perf_counter``) and CPU (``process_time``, this process) seconds of a ``with`` block.

    With ``device``, the device is synchronised before the end is read. ``wall`` and ``cpu`` are read as the block
    runs too (seconds so far).
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self._start = self._start_cpu = 0.0
        self._wall: float | None = None
        self._cpu: float | None = None

    def __enter__(self) -> Timer:
        self._wall = self._cpu = None
        self._start, self._start_cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device is not None:
            sync(self.device)
        self._wall, self._cpu = time.perf_counter() - self._start, time.process_time() - self._start_cpu

    @property
    def wall(self) -> float:
        return time.perf_counter() - self._start if self._wall is None else self._wall

    @property
    def cpu(self) -> float:
        return time.process_time() - self._start_cpu if self._cpu is None else self._cpu


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` wall-clock runs of ``fn`` (seconds; ``inf`` for no run)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleave(items: Sequence[T], repeats: int) -> Iterator[tuple[int, T]]:
    """``(round, item)`` for ``repeats`` rounds over all ``items``, round by round (a b c a b c, not a a b b c c),
    so that a drift of the machine over time spreads over every item alike."""
    for round_index in range(repeats):
        for item in items:
            yield round_index, item


def fastest(results: Iterable[Mapping[str, Any]], group: str, key: str) -> dict[Any, Mapping[str, Any]]:
    """Per value of ``group`` (e.g. the variant), the result with the smallest ``key`` (results without it skipped)."""
    best: dict[Any, Mapping[str, Any]] = {}
    for r in results:
        if key in r and (r[group] not in best or r[key] < best[r[group]][key]):
            best[r[group]] = r
    return best


# ---------------------------------------------------------------------------------------------- memory
def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def current_rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of one process now (Linux ``/proc/<pid>/statm``)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * page_size()


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (``ru_maxrss``, kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _parents() -> dict[int, int]:
    """``{pid: parent pid}`` of every process (one pass over Linux ``/proc``)."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                parents[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += current_rss_bytes(current)
        except (OSError, IndexError, ValueError):
            continue
        pending.extend(children.get(current, []))
    return total


def watch_tree_peak(process: subprocess.Popen, interval: float = 0.1) -> int:
    """Sample the tree RSS of ``process`` every ``interval`` seconds until it exits; the peak in bytes."""
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(interval)
    return peak


def rss_watchdog(limit_gib: float, tag: str) -> None:
    """Abort this process when its resident memory exceeds ``limit_gib`` (the machine is shared), after printing
    an ``error`` result line with ``tag`` (see :func:`run_child`)."""

    def watch():
        while True:
            if current_rss_bytes() > limit_gib * GIB:
                print(f"{tag}{json.dumps({'error': f'resident memory above {limit_gib} GiB, aborted'})}")
                sys.stdout.flush()
                os._exit(3)
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()


def device_name(device: Any) -> str:
    """The GPU's name, or ``cpu x <torch threads>``."""
    import torch

    return torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x {torch.get_num_threads()}"


def memory_kind(device: Any) -> str:
    """What :func:`peak_memory_bytes` measures on ``device``."""
    return "cuda max allocated" if device.type == "cuda" else "process max RSS"


def peak_memory_bytes(device: Any) -> int:
    """``torch.cuda.max_memory_allocated`` on CUDA, else the process's max RSS."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return max_rss_bytes()


# ---------------------------------------------------------------------------------------------- child processes
def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, plus ``extra``, with :data:`PACKAGE_ROOT` first on ``PYTHONPATH`` (the same package)."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def child_command(module: str, flag: str, cfg: Mapping[str, Any]) -> list[str]:
    """``python -m module flag <cfg as JSON>``: one configuration of a benchmark in a fresh interpreter."""
    return [sys.executable, "-m", module, flag, json.dumps(cfg)]


def parse_result(line: str, tag: str) -> dict | None:
    """The JSON after ``tag`` on a result line, or ``None`` for any other line."""
    return json.loads(line[len(tag) :]) if line.startswith(tag) else None


def run_child(module: str, flag: str, cfg: Mapping[str, Any], tag: str, env: Mapping[str, str] | None = None) -> dict:
    """Run one configuration in a fresh subprocess (its peak memory its own) and merge its last result into ``cfg``.

    The child is ``module`` run with ``flag`` and the configuration (see :func:`child_main`); its stdout lines that
    start with ``tag`` carry results, others are ignored; without one, the merged dict has an ``error``.
    """
    proc = subprocess.run(child_command(module, flag, cfg), stdout=subprocess.PIPE, text=True, env=child_env(env))
    results = [r for r in (parse_result(line, tag) for line in proc.stdout.splitlines()) if r is not None]
    if not results:
        return {**cfg, "error": f"subprocess exited with {proc.returncode} without a result"}
    return {**cfg, **results[-1]}


def child_main(argv: Sequence[str], flag: str, handler: Callable[[dict], dict], tag: str) -> int:
    """The child's side of :func:`run_child`: ``argv`` is ``[flag, JSON]``; print ``handler(cfg)`` as a result."""
    if len(argv) != 2 or argv[0] != flag:
        print(f"usage: python -m <module> {flag} JSON (a benchmark's own subprocess)", file=sys.stderr)
        return 2
    print(tag + json.dumps(handler(json.loads(argv[1]))), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------- reporting
def ratio(numerator: Mapping[str, float], denominator: Mapping[str, float], keys: Iterable[str]) -> dict[str, float]:
    """``numerator[k] / denominator[k]`` for each of ``keys``."""
    return {k: numerator[k] / denominator[k] for k in keys}


def spread(values: Sequence[float]) -> float:
    """Largest over smallest of ``values`` (1.0: all equal)."""
    return max(values) / min(values)


def table_header(columns: Sequence[str]) -> str:
    """A markdown table's header and rule lines (``| a | b |`` and ``|---|---|``)."""
    return "| " + " | ".join(columns) + " |\n" + "|" + "---|" * len(columns)


def table_row(cells: Iterable[object]) -> str:
    """One markdown table row (``| a | b |``)."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(columns: Sequence[str], rows: Iterable[Iterable[object]]) -> str:
    """A whole markdown table: header, rule and one line per row."""
    return "\n".join([table_header(columns), *(table_row(r) for r in rows)])
