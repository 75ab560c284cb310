"""Atomic writing of the text, JSON and CSV files that workflows leave behind (reports, datalists, sidecars).

Every file is written to a temporary file in its destination folder and then renamed over the destination
(``os.replace``), so a reader never sees a partial file and a killed run leaves the previous version intact.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text", "write_json", "csv_text", "write_csv"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Create ``path`` atomically: ``write(tmp)`` writes a temporary file ``.<name>.*<suffix>`` in the same folder,
    which is then renamed over ``path`` (parent folders are created). Returns the path.

    ``suffix`` matters to writers that pick the format by extension (``.nii.gz``, ``.png``). The file is made
    readable by all (mode 0644) rather than owner-only like a fresh temporary file, as outputs are shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders are created); returns the path."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, document: Any) -> Path:
    """Write ``document`` as indented JSON (with a final newline) atomically; returns the path."""
    return atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a ``columns`` header and one line per row (a mapping from column to value; other keys of
    a row are left out)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write :func:`csv_text` of ``rows`` to ``path`` atomically; returns the path."""
    return atomic_write_text(path, csv_text(rows, columns))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder and an atomic rename.

    Readers see either the previous file or the complete new one, never a partial write.
    """

    import torch  # here, so that writing reports and cohorts does not load torch

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write, suffix=".tmp")
