"""Seeded splits of a data set's cases (stratified by class on demand) and nested label-fraction subsets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_LABEL_FRACTIONS",
    "SPLITS",
    "split_cases",
    "nested_label_fractions",
]

SPLITS: tuple[str, ...] = ("training", "validation", "test")
"""Split names, as in MONAI decathlon datalists."""

DEFAULT_LABEL_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
"""Label fractions of the training split stored as nested subsets by default."""


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def split_cases(
    case_ids: Sequence[str],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    strata: Mapping[str, object] | None = None,
) -> dict[str, list[str]]:
    """Split case ids into ``training``/``validation``/``test`` by one seeded shuffle.

    Split sizes are ``round(n * fraction)``, at least one case when the fraction is positive; each split is
    returned sorted. The same ids and seed give the same splits whatever the input order. With ``strata``
    (case id -> class label) the shuffle is stratified: every class is spread over the splits in proportion
    to its size, so a small validation split of a classification cohort still holds every class.

    Raises:
        ValueError: a fraction outside [0, 1), duplicated ids, or no case left for training.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"case ids are not unique: {sorted({i for i in ids if ids.count(i) > 1})}")
    n = len(ids)

    def size(fraction: float) -> int:
        return max(1, round(n * fraction)) if fraction > 0 else 0

    n_val, n_test = size(val_fraction), size(test_fraction)
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} case(s) cannot be split with val_fraction={val_fraction} and test_fraction={test_fraction}: "
            "no case would be left for training"
        )
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(n)]
    if strata is not None:
        order = _stratified_order(order, strata, rng)
    return {
        "training": sorted(order[n_val + n_test :]),
        "validation": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


def _stratified_order(order: list[str], strata: Mapping[str, object], rng: np.random.Generator) -> list[str]:
    """Interleave classes so that any prefix of the result holds each class in proportion to its size."""
    groups: dict[object, list[str]] = {}
    for case in order:
        groups.setdefault(strata[case], []).append(case)
    keyed = []
    for members in groups.values():
        offset = rng.random()
        keyed += [((rank + offset) / len(members), case) for rank, case in enumerate(members)]
    return [case for _, case in sorted(keyed)]


def _fraction_key(fraction: float) -> str:
    return f"{float(fraction):g}"


def nested_label_fractions(
    training_ids: Sequence[str],
    fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS,
    seed: int = 0,
    strata: Mapping[str, object] | None = None,
) -> dict[str, list[str]]:
    """Nested subsets of the training cases for label-efficiency experiments.

    Subset ``f`` holds the first ``round(f * n)`` cases (at least one) of one seeded permutation of the
    training ids, so each smaller subset is contained in every larger one. Keys are the fractions written
    with ``%g`` (``"0.2"``); each subset is sorted. With ``strata`` (case id -> class label) every subset keeps
    the classes in proportion.

    Raises:
        ValueError: a fraction outside (0, 1].
    """
    ids = sorted(training_ids)
    # A permutation independent of the split shuffle, but fixed by the same seed.
    rng = np.random.default_rng([seed, 1])
    order = [ids[i] for i in rng.permutation(len(ids))]
    if strata is not None:
        order = _stratified_order(order, strata, rng)
    subsets = {}
    for fraction in sorted(float(f) for f in fractions):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"label fractions must be in (0, 1], got {fraction}")
        count = min(len(ids), max(1, round(fraction * len(ids)))) if ids else 0
        subsets[_fraction_key(fraction)] = sorted(order[:count])
    return subsets
