"""The labelled sets and test splits of a site study, written as one datalist per number of labelled cases.

A site study's downstream cohort holds cases of the labelled site and of an out-of-site test site. From its
datalist (every case in ``training``, each entry with its ``site``), :func:`write_site_datalists` writes, beside
it, ``datalist_labelled<n>.json`` for every number ``n`` of labelled cases: ``training`` the first ``n`` cases
(per class for classification) of one seeded order of the labelled site's training pool, so the sets are nested;
``validation`` and ``test`` held-out cases of the labelled site; ``test_out`` cases of the out-of-site site. Every
file has the same validation and test splits, so every run of a study is selected and scored on the same cases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainmvp_components.utils.writers import write_json

__all__ = ["labelled_datalist_name", "site_cohort_sites", "write_site_datalists"]


def labelled_datalist_name(count: int) -> str:
    """File name of the datalist with ``count`` labelled cases (per class for classification)."""
    return f"datalist_labelled{int(count)}.json"


def site_cohort_sites(
    labelled_site: str, out_of_site: str, largest: int, validation: int, test: int, classes: int = 1
) -> list[str]:
    """The site of every subject of a site study's downstream cohort: enough cases of the labelled site for the
    largest labelled set, the validation and the test cases, then the out-of-site test cases (``classes``
    times each, for a classification cohort whose classes alternate with the subject index)."""
    inside = classes * (int(largest) + int(validation) + int(test))
    return [labelled_site] * inside + [out_of_site] * (classes * int(test))


def _by_class(entries: Sequence[dict[str, Any]], rng: np.random.Generator) -> list[list[dict[str, Any]]]:
    """The entries in one seeded order per class (one group when they have no class label)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for entry in sorted(entries, key=lambda e: e["case"]):
        key = entry["label"] if isinstance(entry.get("label"), int) else None
        groups.setdefault(key, []).append(entry)
    return [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(groups.items(), key=str)]


def _take(groups: list[list[dict[str, Any]]], per_group: int, what: str) -> list[dict[str, Any]]:
    """Remove and return the first ``per_group`` entries of every group."""
    taken = []
    for group in groups:
        if len(group) < per_group:
            raise ValueError(f"not enough cases for {what}: need {per_group} per class, {len(group)} left")
        taken += group[:per_group]
        del group[:per_group]
    return sorted(taken, key=lambda e: e["case"])


def write_site_datalists(
    datalist: str | os.PathLike,
    labelled_site: str,
    out_of_site: str,
    counts: Sequence[int],
    validation: int,
    test: int,
    seed: int = 0,
) -> dict[int, str]:
    """Write ``datalist_labelled<n>.json`` beside ``datalist`` for every ``n`` of ``counts`` (kept when present:
    they are written atomically and depend only on the inputs). ``validation``, ``test`` and the counts are per
    class when the entries carry integer class labels.

    Returns:
        ``{n: path}``.

    Raises:
        ValueError: an entry without a site, or too few cases of a site.
    """
    datalist = Path(datalist)
    paths = {int(n): str(datalist.parent / labelled_datalist_name(n)) for n in counts}
    if all(Path(p).is_file() for p in paths.values()):
        return paths
    document = json.loads(datalist.read_text())
    entries = [e for split in ("training", "validation", "test") for e in document.get(split, [])]
    if any("site" not in e for e in entries):
        raise ValueError(f"datalist {datalist}: every entry needs a site (a cohort made with sites)")
    rng = np.random.default_rng([int(seed), 2])
    inside = _by_class([e for e in entries if e["site"] == labelled_site], rng)
    outside = _by_class([e for e in entries if e["site"] == out_of_site], rng)
    splits = {
        "validation": _take(inside, validation, f"validation at site {labelled_site}"),
        "test": _take(inside, test, f"the test split at site {labelled_site}"),
        "test_out": _take(outside, test, f"the out-of-site test split at site {out_of_site}"),
    }
    for count in sorted(paths):
        if any(len(group) < count for group in inside):
            raise ValueError(f"not enough cases at site {labelled_site} for {count} labelled case(s) per class")
        # the first cases of each class's order: every labelled set holds the smaller ones
        training = sorted((e for group in inside for e in group[:count]), key=lambda e: e["case"])
        subset = {
            **{k: v for k, v in document.items() if k not in ("training", "validation", "test", "label_fractions")},
            "description": f"{count} labelled case(s) (per class) of site {labelled_site}; test_out: {out_of_site}",
            "labelled_site": labelled_site,
            "out_of_site": out_of_site,
            "training": training,
            **splits,
            "numTraining": len(training),
            "numValidation": len(splits["validation"]),
            "numTest": len(splits["test"]),
            "numTestOut": len(splits["test_out"]),
        }
        write_json(paths[count], subset)
    return paths
