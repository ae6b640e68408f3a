"""The model the app ships: intact, documented, and right on the sample X-rays."""

from __future__ import annotations

import json

import pytest

from pneumo_desktop import RESEARCH_USE_STATEMENT
from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.runtime import PneumoniaModel
from tests.conftest import sample_label


def test_every_artifact_matches_its_sha256(bundled_model_dir):
    card = mc.load_model_card(bundled_model_dir)
    assert set(card.artifacts) == {mc.TFLITE_FILENAME, mc.KERAS_FILENAME}
    mc.verify_artifacts(bundled_model_dir, card)  # raises on any mismatch
    total = sum((bundled_model_dir / name).stat().st_size for name in card.artifacts)
    assert total < 100 * 1024 * 1024


def test_card_records_how_the_model_was_made(bundled_model_dir):
    raw = json.loads((bundled_model_dir / mc.CARD_FILENAME).read_text())
    assert raw["intended_use"] == RESEARCH_USE_STATEMENT
    assert "Kermany" in raw["data_attribution"] and "CC BY 4.0" in raw["data_attribution"]
    assert len(raw["initial_weights"]["sha256"]) == 64
    assert len(raw["training"]["data_manifest_sha256"]) == 64
    assert raw["training"]["command"].startswith("pneumo-trainer train")
    validation = raw["metrics"]["validation"]
    assert validation["roc_auc"] >= 0.98
    assert validation["recall"] >= 0.95 and validation["specificity"] >= 0.90
    assert raw["export_check"]["tflite_vs_keras_max_abs_diff"] <= 1e-4
    assert 0 < raw["threshold"]["value"] < 1


def test_bundled_model_labels_the_samples_correctly(bundled_model_dir, sample_paths):
    model = PneumoniaModel.load(bundled_model_dir)
    predictions = model.predict([load_image(p) for p in sample_paths])
    wrong = [(p.name, pred.probability) for p, pred in zip(sample_paths, predictions) if pred.label != sample_label(p)]
    assert not wrong, f"misclassified samples: {wrong}"
    assert all(pred.threshold == pytest.approx(model.card.threshold) for pred in predictions)
