"""Data set problems: one record per thing wrong with a case or a file, and the error that lists them all.

:class:`DatasetProblem` is what case discovery (:mod:`brainmvp_components.data.discovery`), the integrity checks
(:mod:`brainmvp_components.data.checks`), the datalist (:mod:`brainmvp_components.data.datalist`) and the
inference inputs (:mod:`brainmvp_components.data.inference_inputs`) report; :class:`DatasetIntegrityError` raises
a list of them at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DatasetProblem",
    "DatasetIntegrityError",
]


@dataclass(frozen=True)
class DatasetProblem:
    """One integrity problem: the case (``None`` for the data set as a whole), the file and what is wrong."""

    case: str | None
    file: str | None
    message: str

    def __str__(self) -> str:
        where = [f"case {self.case!r}" if self.case is not None else "data set"]
        if self.file is not None:
            where.append(f"file {self.file}")
        return f"{', '.join(where)}: {self.message}"


class DatasetIntegrityError(ValueError):
    """Raised when a data set has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[DatasetProblem], header: str = "data set integrity check failed"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header} ({len(self.problems)} problem(s)):\n{lines}")
