"""Batch inference that never fails silently: per-case failures, outputs named by case, resumable runs.

The pieces a bundle's ``inference.json`` puts together:

- :func:`plan_inference`: reads the cases (a datalist or a folder of case folders, through
  :func:`~brainmvp_components.data.inference_inputs.inference_entries`), stops before anything runs when two cases
  would write the same output or a case name cannot name a file, records bad entries (missing files, malformed
  entries, case folders with duplicate images) as failures, and skips the cases whose outputs exist unless
  ``overwrite`` is set (so a long batch resumes where it stopped).
- :class:`CaseDataset` and :func:`collate_cases`: a case whose preprocessing raises (the checks of
  :class:`~brainmvp_components.transforms.io.LoadModalities`: unreadable, wrong dimensionality, non-finite or
  constant values, grids that differ; or any other error) becomes a failure record instead of stopping the
  data loader.
- :class:`InferenceEvaluator`: a MONAI ``SupervisedEvaluator`` that records those failures and any error of the
  network or the post-processing of a case, goes on with the next case, writes ``failures.json`` and
  ``failures.csv`` (case, file, reason) beside the outputs, and ends a run with failures by raising
  :class:`InferenceFailed` (a ``SystemExit``: the process exits with status 1 and its one-line summary is the
  last line of output).

What a user sees for each kind of bad input is described in ``docs/inference.md``.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.data import Dataset, list_data_collate
from monai.engines import SupervisedEvaluator

from brainmvp_components.data.checks import duplicate_case_problems
from brainmvp_components.data.discovery import case_id_from_path
from brainmvp_components.data.inference_inputs import inference_entries
from brainmvp_components.data.modalities import UnknownModalityError
from brainmvp_components.data.problems import DatasetIntegrityError, DatasetProblem
from brainmvp_components.transforms.io import CaseLoadError
from brainmvp_components.utils.writers import write_csv, write_json

__all__ = [
    "FAILURE_KEY",
    "FAILURES_NAME",
    "InferenceError",
    "InferenceFailed",
    "InferencePlan",
    "plan_inference",
    "CaseDataset",
    "collate_cases",
    "InferenceEvaluator",
]

logger = logging.getLogger(__name__)

FAILURE_KEY = "inference_failures"
"""Key of the failure records a failed item carries through the data loader."""

FAILURES_NAME = "failures"
"""Base name of the failures report, ``failures.json`` and ``failures.csv``, in the output folder."""

FAILURE_COLUMNS: tuple[str, ...] = ("case", "file", "reason", "stage")

_INPUT_ERRORS = (CaseLoadError, DatasetIntegrityError, UnknownModalityError)


class InferenceError(SystemExit):
    """Inference cannot start or cannot go on (a problem of the run, not of one case).

    A ``SystemExit`` so that ``python -m monai.bundle run`` ends with this one-line message and exit status 1
    instead of wrapping it in configuration-evaluation errors; catch it like any exception when calling from
    Python. ``str(error)`` is the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InferenceFailed(InferenceError):
    """Some cases failed; the others were written. ``failures`` holds the records, ``report`` the CSV path."""

    def __init__(self, message: str, failures: Sequence[dict], report: Path | None) -> None:
        super().__init__(message)
        self.failures = list(failures)
        self.report = report


@dataclass
class InferencePlan:
    """The cases of one inference run.

    Attributes:
        cases: entries to run (``{"case", "image", "modalities", ...}``).
        failures: problems found before running (bad entries), as failure records ``{case, file, reason, stage}``.
        skipped: cases whose outputs exist (not run, kept).
        output_dir: where outputs and the failures report go.
    """

    cases: list[dict]
    failures: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    output_dir: Path = Path(".")

    def __len__(self) -> int:
        return len(self.cases)


def failure_record(problem: DatasetProblem, stage: str, detail: str | None = None) -> dict:
    """A failures-report row from a :class:`~brainmvp_components.data.problems.DatasetProblem`."""
    record = {
        "case": problem.case,
        "file": problem.file,
        "reason": problem.message.splitlines()[0] if problem.message else "",
        "stage": stage,
    }
    if detail:
        record["detail"] = detail
    return record


def _describe(record: Mapping) -> str:
    where = [f"case {record['case']!r}"]
    if record.get("file"):
        where.append(f"file {record['file']}")
    return f"{', '.join(where)}: {record['reason']}"


def _first_file(image: Any) -> str | None:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, (list, tuple)) and image and isinstance(image[0], (str, os.PathLike)):
        return str(image[0])
    return None


def _finished_in_report(path: Path) -> set[str]:
    """Case names listed in a predictions JSON report (``{"cases": [{"case": ...}]}``)."""
    import json

    if not path.is_file():
        return set()
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning(f"cannot read the existing predictions {path} ({err}); every case will be run")
        return set()
    return {str(c.get("case")) for c in document.get("cases", []) if isinstance(c, dict)}


def plan_inference(
    datalist: str | os.PathLike | None,
    dataset_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    split: str = "test",
    output_files: Sequence[str] = ("{case}_seg.nii.gz", "{case}_seg.json"),
    predictions_file: str | None = None,
    overwrite: bool = False,
) -> InferencePlan:
    """The cases to run, the bad entries, and the cases already done.

    Args:
        datalist: a datalist JSON (see :func:`~brainmvp_components.data.inference_inputs.inference_cases`); entries
            are named by their ``case`` or ``id``, else by their first file (or its folder, for a file named by its
            modality alone, such as ``patient1/t1.nii.gz``).
        dataset_dir: used without a datalist: a folder of case folders, each case named by its folder.
        output_dir: the output folder.
        split: the split of a datalist with splits.
        output_files: a case counts as done when all these files exist in ``output_dir`` (``{case}`` is replaced);
            the segmentation bundle writes the prediction, then its sidecar, so the sidecar marks a complete case.
        predictions_file: instead of ``output_files``, a predictions JSON in ``output_dir`` listing the done cases
            (the classification bundle's ``predictions.json``).
        overwrite: run every case, replacing existing outputs; by default done cases are skipped.

    Raises:
        InferenceError: no datalist or data set to read, two cases would write the same output, or a case name
            cannot name a file. Raised before anything runs.
    """
    output_dir = Path(output_dir)
    try:
        entries, problems = inference_entries(datalist, dataset_dir, split)
    except (FileNotFoundError, ValueError) as err:
        raise InferenceError(f"inference not started: {err}") from err
    clashes = duplicate_case_problems(entries, "the inference cases")
    if clashes:
        details = "; ".join(p.message.split("); ")[0] + ")" for p in clashes)
        raise InferenceError(
            f"inference not started: {len(clashes)} output name(s) claimed by more than one case, so outputs would "
            f"overwrite each other: {details}; give each entry a unique 'case' (or 'id')"
        )
    bad_names = [e["case"] for e in entries if not _usable_name(str(e["case"]))]
    if bad_names:
        raise InferenceError(
            f"inference not started: case name(s) {bad_names} cannot name output files (empty, '.', '..', or with "
            "a path separator); give those entries a 'case' (or 'id')"
        )
    failures = [failure_record(p, "entry") for p in problems]
    if overwrite:
        done: set[str] = set()
    elif predictions_file:
        done = _finished_in_report(output_dir / predictions_file)
    else:
        done = {
            str(e["case"])
            for e in entries
            if all((output_dir / name.format(case=e["case"])).is_file() for name in output_files)
        }
    cases = [e for e in entries if str(e["case"]) not in done]
    skipped = [str(e["case"]) for e in entries if str(e["case"]) in done]
    if skipped:
        logger.info(
            f"{len(skipped)} case(s) already have outputs in {output_dir} and are skipped (set overwrite to true to "
            f"replace them): {', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}"
        )
    elif overwrite and any(output_dir.glob("*")):
        logger.info(f"overwrite is on: existing outputs in {output_dir} are replaced")
    logger.info(f"{len(cases)} case(s) to run, {len(failures)} bad entr(y/ies), {len(skipped)} skipped")
    return InferencePlan(cases=cases, failures=failures, skipped=skipped, output_dir=output_dir)


def _usable_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _root_cause(err: BaseException) -> BaseException:
    """The innermost cause of MONAI's chained ``applying transform`` errors."""
    seen = set()
    while err.__cause__ is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, _INPUT_ERRORS):
            return err
        err = err.__cause__
    return err


def error_records(err: BaseException, case: str, file: str | None, stage: str) -> list[dict]:
    """Failure records for an error raised while processing ``case``: the problems of an input error, else one
    record with the error's type and message (the traceback goes to the record's ``detail``)."""
    root = _root_cause(err)
    if isinstance(root, (CaseLoadError, DatasetIntegrityError)):
        return [failure_record(p, stage) for p in root.problems]
    if isinstance(root, (ValueError, FileNotFoundError)):
        message = str(root)
        for prefix in (f"case {case!r}: ", f"case {case}: ", f"{case}: "):
            message = message[len(prefix) :] if message.startswith(prefix) else message
        return [failure_record(DatasetProblem(case, file, message), stage)]
    detail = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    reason = f"{type(root).__name__}: {str(root).strip().splitlines()[0] if str(root).strip() else ''}".rstrip(": ")
    return [failure_record(DatasetProblem(case, file, reason), stage, detail=detail)]


class CaseDataset(Dataset):
    """A MONAI ``Dataset`` whose failing items become failure records instead of errors.

    ``dataset[i]`` is the transformed item, or ``{"case": ..., "inference_failures": [records]}`` when the
    transform raised (records as in the failures report). Use it with :func:`collate_cases`.
    """

    def _transform(self, index: int):
        item = self.data[index]
        try:
            return super()._transform(index)
        except Exception as err:  # any failure of one case must not stop the batch
            case = str(item.get("case") or case_id_from_path(item.get("image") or "case"))
            return {"case": case, FAILURE_KEY: error_records(err, case, _first_file(item.get("image")), "input")}


def collate_cases(batch: Sequence[Mapping[Hashable, Any]]) -> dict:
    """``collate_fn`` for :class:`CaseDataset`: collates the sound items (MONAI ``list_data_collate``) and
    passes the failure records of the others under :data:`FAILURE_KEY` (a plain list)."""
    failures = [record for item in batch for record in item.get(FAILURE_KEY, [])]
    good = [item for item in batch if FAILURE_KEY not in item]
    collated = list_data_collate(good) if good else {}
    if failures:
        collated[FAILURE_KEY] = failures
    return collated


def _batch_cases(batch: Mapping) -> list[tuple[str, str | None]]:
    cases = batch.get("case")
    if isinstance(cases, str):
        cases = [cases]
    images = batch.get("image")
    meta = getattr(images, "meta", {}) or {}
    if not cases:
        cases = meta.get("case_id") or ["case"]
        cases = [cases] if isinstance(cases, str) else list(cases)
    sources = meta.get("filename_or_obj") or [None] * len(cases)
    sources = [sources] if isinstance(sources, str) else list(sources)
    return [(str(c), None if s is None else str(s)) for c, s in zip(cases, sources + [None] * len(cases))]


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()


class InferenceEvaluator(SupervisedEvaluator):
    """A ``SupervisedEvaluator`` for batch inference in which one bad case does not stop the others.

    Per iteration: failure records from :func:`collate_cases` are recorded; an error of the network, the inferer
    or the post-processing of the batch is recorded for each of its cases (use batches of one case) and the run
    goes on. Each failure is logged on one line naming the case, the file and the problem. When the run ends:

    - with failures: ``failures.json`` (with the traceback of unexpected errors) and ``failures.csv`` (``case,
      file, reason, stage``) are written atomically to ``output_dir``, and :class:`InferenceFailed` is raised
      (unless ``raise_on_failure`` is false) with a one-line summary: for a single case, the case, its file and
      the problem; otherwise how many cases failed and where the report is;
    - without: a report of an earlier run is removed, so a report always describes the last run.

    An error outside the cases (a missing checkpoint, say) raises :class:`InferenceError` with its message.

    Args:
        *args, **kwargs: those of ``SupervisedEvaluator`` (``device``, ``val_data_loader``, ``network``, ...).
        plan: the :class:`InferencePlan` the data loader reads; its up-front failures and skipped cases are
            reported with the others.
        output_dir: where the failures report goes (default: the plan's output folder).
        raise_on_failure: raise :class:`InferenceFailed` at the end of a run with failures.
    """

    def __init__(
        self,
        *args,
        plan: InferencePlan | None = None,
        output_dir: str | os.PathLike | None = None,
        raise_on_failure: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.output_dir = (
            Path(output_dir) if output_dir is not None else (plan.output_dir if plan is not None else Path("."))
        )
        self.raise_on_failure = raise_on_failure
        self.failures: list[dict] = []
        self.completed_cases: list[str] = []

    def record_failures(self, records: Sequence[dict]) -> None:
        """Add failure records and log each on one line."""
        for record in records:
            self.failures.append(dict(record))
            logger.error(f"failed: {_describe(record)}")

    def _iteration(self, engine, batchdata: dict) -> Any:
        failures = batchdata.pop(FAILURE_KEY, []) if isinstance(batchdata, dict) else []
        self.record_failures(failures)
        if not isinstance(batchdata, dict) or "image" not in batchdata:
            engine.state.batch, engine.state.output = [], []
            return []
        cases = _batch_cases(batchdata)
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as err:  # one case's failure must not stop the batch
            records = []
            for case, source in cases:
                records += error_records(err, case, source, "inference")
            self.record_failures(records)
            engine.state.batch, engine.state.output = [], []
            return []
        self.completed_cases += [case for case, _ in cases]
        return output

    def run(self) -> None:  # type: ignore[override]
        self.failures, self.completed_cases = [], []
        self.record_failures(self.plan.failures if self.plan is not None else [])
        for suffix in (".json", ".csv"):
            (self.output_dir / f"{FAILURES_NAME}{suffix}").unlink(missing_ok=True)
        try:
            if self.state.epoch_length == 0:
                logger.info("no case to run")
            else:
                super().run()
        except Exception as err:  # a problem of the run as a whole: one line, the traceback at debug level
            logger.debug("inference stopped", exc_info=True)
            root = _root_cause(err)
            _flush()
            raise InferenceError(f"inference stopped: {type(root).__name__}: {root}") from err
        self._finish()

    def _finish(self) -> None:
        skipped = len(self.plan.skipped) if self.plan is not None else 0
        failed_cases = list(dict.fromkeys(str(r["case"]) for r in self.failures))
        total = len(self.completed_cases) + len(failed_cases)
        logger.info(
            f"{len(self.completed_cases)} case(s) done, {len(failed_cases)} failed, {skipped} skipped (outputs "
            f"existed); outputs in {self.output_dir}"
        )
        if not self.failures:
            return
        paths = self.write_failures()
        if total == 1:
            message = "; ".join(_describe(r) for r in self.failures)
        else:
            message = (
                f"{len(failed_cases)} of {total} case(s) failed ({', '.join(failed_cases[:5])}"
                f"{', ...' if len(failed_cases) > 5 else ''}); the other {len(self.completed_cases)} were written; "
                f"failures are listed in {paths['csv']}"
            )
        if self.raise_on_failure:
            _flush()
            raise InferenceFailed(message, self.failures, paths["csv"])
        logger.error(message)

    def write_failures(self) -> dict[str, Path]:
        """Write ``failures.json`` and ``failures.csv`` to the output folder; returns their paths."""
        failed_cases = list(dict.fromkeys(str(r["case"]) for r in self.failures))
        paths = {
            "json": self.output_dir / f"{FAILURES_NAME}.json",
            "csv": self.output_dir / f"{FAILURES_NAME}.csv",
        }
        write_json(
            paths["json"],
            {
                "failed_cases": failed_cases,
                "num_failed": len(failed_cases),
                "num_done": len(self.completed_cases),
                "num_skipped": len(self.plan.skipped) if self.plan is not None else 0,
                "failures": self.failures,
            },
        )
        write_csv(paths["csv"], self.failures, FAILURE_COLUMNS)
        logger.info(f"wrote the failures report {paths['json']} and {paths['csv']}")
        return paths
