"""The decision threshold of a two-class classifier, chosen on validation cases and stored beside the model.

A classifier can rank cases well (high AUC) and still call most of them one class at the default threshold 0.5:
its probabilities are shifted, not wrong in order. The operating point is the threshold on the positive class's
probability that maximises balanced accuracy on the validation cases; among the thresholds that tie, the middle
(in logits) of the widest interval of them, so that it sits as far as possible from the validation cases on
either side. It is chosen once, after training (the classification bundle's ``calibrate.json``), written to
``<ckpt_dir>/operating_point.json`` with the digest of the ``model.pt`` it was chosen for, and used by evaluation
and inference when present (an operating point of another model is an error, not a silent misuse).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainmvp_components.utils.writers import write_json

__all__ = ["OPERATING_POINT_NAME", "choose_threshold", "load_threshold", "save_operating_point"]

logger = logging.getLogger(__name__)

OPERATING_POINT_NAME = "operating_point.json"
"""File beside ``model.pt`` holding the decision threshold chosen on validation cases."""

MODEL_NAME = "model.pt"
_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def choose_threshold(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """The threshold on ``scores`` (probabilities of class 1) that maximises balanced accuracy on ``labels``.

    A case is called class 1 when its score is at least the threshold. Candidate thresholds lie between
    consecutive distinct scores; among those that reach the best balanced accuracy, the midpoint (in logits) of
    the widest run of them is returned, so that ties are broken by the margin to the nearest cases.

    Returns:
        ``(threshold, balanced accuracy at it)``.

    Raises:
        ValueError: lengths differ, a label is not 0 or 1, or one class is absent.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.size != y.size:
        raise ValueError(f"{s.size} scores for {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()))}")
    if not (y == 0).any() or not (y == 1).any():
        raise ValueError("the operating point needs validation cases of both classes")
    z = _logit(s)
    logits = np.unique(z)
    # cut points: below every score, between consecutive scores, above every score
    cuts = np.concatenate([[logits[0] - 1.0], (logits[:-1] + logits[1:]) / 2, [logits[-1] + 1.0]])
    positives, negatives = (y == 1).sum(), (y == 0).sum()
    balanced = np.array([(((z >= c) & (y == 1)).sum() / positives + ((z < c) & (y == 0)).sum() / negatives) / 2
                         for c in cuts])  # fmt: skip
    best = balanced.max()
    # cut i lies between edges[i] and edges[i + 1]; a run of consecutive best cuts spans from the score below its
    # first cut to the score above its last
    edges = np.concatenate([[logits[0] - 2.0], logits, [logits[-1] + 2.0]])
    is_best = np.isclose(balanced, best)
    runs = []
    for best_run, group in itertools.groupby(range(len(cuts)), key=lambda i: bool(is_best[i])):
        if best_run:
            run = list(group)
            low, high = edges[run[0]], edges[run[-1] + 1]
            runs.append((high - low, (low + high) / 2))
    _, middle = max(runs)
    return float(1 / (1 + math.exp(-middle))), float(best)


def _model_digest(ckpt_dir: Path) -> str | None:
    model = ckpt_dir / MODEL_NAME
    if not model.is_file():
        return None
    digest = hashlib.sha256()
    with open(model, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_operating_point(ckpt_dir: str | os.PathLike, threshold: float, **info: object) -> Path:
    """Write ``{"threshold": ..., "model_sha256": ..., **info}`` to ``<ckpt_dir>/operating_point.json``
    (atomically); the digest ties it to the ``model.pt`` beside it, when there is one."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"the threshold must lie in (0, 1), got {threshold}")
    ckpt_dir = Path(ckpt_dir)
    record = {"threshold": float(threshold), "model_sha256": _model_digest(ckpt_dir), **info}
    return write_json(ckpt_dir / OPERATING_POINT_NAME, record)


def load_threshold(ckpt_dir: str | os.PathLike) -> float | None:
    """The stored threshold, or ``None`` (decisions by the larger probability) when the model has none."""
    path = Path(ckpt_dir) / OPERATING_POINT_NAME
    if not path.is_file():
        logger.info("no %s: each case is called the class of larger probability", path)
        return None
    try:
        record = json.loads(path.read_text())
        threshold = float(record["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable operating point ({err}); delete it or run calibrate.json") from err
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"{path}: threshold {threshold} is not in (0, 1); delete it or run calibrate.json again")
    stored, current = record.get("model_sha256"), _model_digest(Path(ckpt_dir))
    if stored and current and stored != current:
        raise ValueError(
            f"{path} was chosen for another {MODEL_NAME} than the one beside it (retrained since?): run "
            "calibrate.json again, or delete it to decide by the larger probability"
        )
    logger.info("operating point %.4f from %s", threshold, path)
    return threshold
