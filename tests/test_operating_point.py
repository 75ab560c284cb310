"""The classifier's operating point: chosen on validation cases, stored beside the model, used for decisions."""

from __future__ import annotations

import json

import pytest
import torch

from brainmvp_components.metrics.classification import (
    ClassificationReportWriter,
    classification_metrics,
    predicted_classes,
)
from brainmvp_components.metrics.operating_point import choose_threshold, load_threshold, save_operating_point


def test_threshold_separates_shifted_probabilities_with_the_widest_margin():
    # every AD case ranks above every CN case, but most sit below 0.5: argmax calls them CN
    scores = [0.01, 0.02, 0.03, 0.20, 0.35, 0.60]
    labels = [0, 0, 0, 1, 1, 1]
    threshold, balanced = choose_threshold(scores, labels)
    assert balanced == 1.0
    assert 0.03 < threshold < 0.20
    # the middle of the gap in logits: equally far from the last CN case and the first AD case
    logit = lambda p: torch.logit(torch.tensor(p, dtype=torch.float64))  # noqa: E731
    assert float(logit(threshold) - logit(0.03)) == pytest.approx(float(logit(0.20) - logit(threshold)))
    probabilities = torch.tensor([[1 - s, s] for s in scores])
    assert classification_metrics(probabilities, labels)["balanced_accuracy"] == pytest.approx(2 / 3)
    assert classification_metrics(probabilities, labels, threshold=threshold)["balanced_accuracy"] == 1.0


def test_threshold_with_overlapping_classes_maximises_balanced_accuracy():
    scores = [0.1, 0.4, 0.45, 0.5, 0.55, 0.9, 0.95, 0.3]
    labels = [0, 0, 1, 0, 1, 1, 1, 0]
    threshold, balanced = choose_threshold(scores, labels)
    predicted = [int(s >= threshold) for s in scores]
    sens = sum(p == 1 for p, y in zip(predicted, labels) if y == 1) / 4
    spec = sum(p == 0 for p, y in zip(predicted, labels) if y == 0) / 4
    assert balanced == pytest.approx((sens + spec) / 2)
    for cut in [0.05, 0.2, 0.35, 0.42, 0.47, 0.52, 0.6, 0.92, 0.99]:  # no other threshold does better
        other = [int(s >= cut) for s in scores]
        other_sens = sum(p == 1 for p, y in zip(other, labels) if y == 1) / 4
        other_spec = sum(p == 0 for p, y in zip(other, labels) if y == 0) / 4
        assert (other_sens + other_spec) / 2 <= balanced + 1e-12


def test_threshold_needs_both_classes_and_binary_labels():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([0.2, 0.4], [1, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        choose_threshold([0.2, 0.4], [0, 2])
    with pytest.raises(ValueError, match="2 scores for 3 labels"):
        choose_threshold([0.2, 0.4], [0, 1, 1])
    with pytest.raises(ValueError, match="two classes"):
        predicted_classes(torch.full((2, 3), 1 / 3), threshold=0.3)


def test_stored_threshold_round_trip_and_bad_files(tmp_path):
    assert load_threshold(tmp_path) is None
    save_operating_point(tmp_path, 0.12, cases=8)
    assert load_threshold(tmp_path) == pytest.approx(0.12)
    assert json.loads((tmp_path / "operating_point.json").read_text())["cases"] == 8
    (tmp_path / "operating_point.json").write_text('{"threshold": 1.5}')
    with pytest.raises(ValueError, match="operating_point.json: threshold 1.5 is not in"):
        load_threshold(tmp_path)
    (tmp_path / "operating_point.json").write_text("{")
    with pytest.raises(ValueError, match="not a readable operating point"):
        load_threshold(tmp_path)
    with pytest.raises(ValueError, match="must lie in"):
        save_operating_point(tmp_path, 0.0)


def test_threshold_of_another_model_is_refused(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights of the calibrated model")
    save_operating_point(tmp_path, 0.2)
    assert load_threshold(tmp_path) == pytest.approx(0.2)
    (tmp_path / "model.pt").write_bytes(b"weights after retraining")
    with pytest.raises(ValueError, match="chosen for another model.pt"):
        load_threshold(tmp_path)


def _write_report(writer: ClassificationReportWriter, scores, labels) -> dict:
    writer._cases = [f"case{i}" for i in range(len(scores))]
    writer._probabilities = [torch.tensor([1 - s, s]) for s in scores]
    writer._labels = list(labels)
    return writer.write()


def test_report_writer_calibrates_on_validation_then_decides_with_the_threshold(tmp_path):
    scores, labels = [0.01, 0.02, 0.25, 0.40], [0, 0, 1, 1]
    paths = _write_report(ClassificationReportWriter(tmp_path / "val", ["CN", "AD"], operating_point_dir=tmp_path),
                          scores, labels)  # fmt: skip
    threshold = load_threshold(tmp_path)
    assert paths["operating_point"] == tmp_path / "operating_point.json" and 0.02 < threshold < 0.25
    assert json.loads((tmp_path / "val" / "metrics.json").read_text())["balanced_accuracy"] == 0.5  # argmax
    _write_report(ClassificationReportWriter(tmp_path / "test", ["CN", "AD"], threshold=threshold), scores, labels)
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["balanced_accuracy"] == 1.0 and metrics["threshold"] == pytest.approx(threshold)
    rows = (tmp_path / "test" / "predictions.csv").read_text().splitlines()
    assert rows[3].endswith(",1,AD,1,AD")  # 0.25 is called AD at the operating point


def test_report_writer_without_both_classes_keeps_argmax_decisions(tmp_path, caplog):
    save_operating_point(tmp_path, 0.3)  # an earlier model's
    writer = ClassificationReportWriter(tmp_path / "val", ["CN", "AD"], operating_point_dir=tmp_path)
    with caplog.at_level("WARNING"):
        paths = _write_report(writer, [0.1, 0.3], [0, 0])
    assert "operating_point" not in paths and load_threshold(tmp_path) is None
    assert "all of one class" in caplog.text
