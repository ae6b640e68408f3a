"""Shared fixtures: real sample images, a tiny real exported model, dataset location."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pneumo_desktop.core.model_card import ModelCard
from pneumo_desktop.core.preprocess import PREPROCESSING_ID

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "resources" / "samples"
BUNDLED_MODEL_DIR = REPO_ROOT / "resources" / "model"
SHARED_DIR = REPO_ROOT.parent / "shared"
DATASET_DIR = Path(os.environ.get("PNEUMO_DATASET", SHARED_DIR / "data" / "chest_xray"))
WEIGHTS_DIR = Path(os.environ.get("PNEUMO_WEIGHTS", SHARED_DIR / "weights"))


def sample_label(path: Path) -> str:
    """Labels of the bundled samples are in their names (dataset convention)."""
    return "PNEUMONIA" if path.name.startswith("person") else "NORMAL"


@pytest.fixture(scope="session")
def sample_paths() -> list[Path]:
    paths = sorted(SAMPLES_DIR.glob("*.jpeg"))
    assert len(paths) >= 6, "resources/samples must hold the sample X-rays"
    return paths


FAKE_SHA256 = "f" * 64  # what a fake card says model.tflite hashes to


@pytest.fixture(autouse=True)
def _private_config_dir(tmp_path_factory, monkeypatch):
    """Site profiles live in the user's config folder: tests get their own, never the real one."""
    monkeypatch.setenv("PNEUMO_DESKTOP_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("PNEUMO_DESKTOP_DATA_DIR", str(tmp_path_factory.mktemp("data")))  # the scoring log


def make_fake_card(
    threshold: float = 0.5, threshold_rule: str = "test", sha256: str = FAKE_SHA256, **fields: Any
) -> ModelCard:
    """A valid model card for tests that need no real model file: `threshold`, `threshold_rule` and `sha256`
    set the nested fields, any other keyword replaces a top-level field of the card's JSON."""
    data: dict[str, Any] = {
        "name": "fake", "version": "1", "backbone": "none", "input_size": 32,
        "preprocessing": {"id": PREPROCESSING_ID}, "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": {"value": threshold, "rule": threshold_rule}, "gradcam": {"layer": "x"},
        "artifacts": {"model.tflite": {"sha256": sha256}}, "intended_use": "tests",
    }
    data.update(fields)
    return ModelCard.from_dict(data)


@pytest.fixture
def fake_card() -> Callable[..., ModelCard]:
    """The make_fake_card factory, as a fixture."""
    return make_fake_card


@pytest.fixture
def fake_model() -> Callable[..., Any]:
    """`fake_model(folder, engine=None, threshold=0.5)`: a PneumoniaModel over test_batch's FakeEngine."""
    from tests.test_batch import make_fake_model

    return make_fake_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, sample_paths) -> Path:
    """A real exported model folder (tiny random backbone, input 64) built by the trainer's exporter, with the
    v2 contract: a subtype head (p_viral) and an in-graph out-of-distribution score fitted on the samples,
    whose limit admits every sample."""
    import keras

    from pneumo_desktop.core.imaging import load_image
    from pneumo_desktop.core.preprocess import prepare_input
    from trainer.backbones import BACKBONES, build_backbone
    from trainer.card_builder import build_card
    from trainer.export import export_model_folder
    from trainer.model import build_classifier
    from trainer.ood import fit_ood, pooled_feature_model, pooled_features, score_numpy

    keras.utils.set_random_seed(1234)
    backbone, _ = build_backbone("tiny", 64, None)
    model = build_classifier(backbone, subtype_head=True)
    samples = np.stack([prepare_input(load_image(p).grey, 64) for p in sample_paths]).astype(np.float32)
    layers = BACKBONES["tiny"].ood_layers
    features = pooled_features(pooled_feature_model(model, layers), samples)
    stats = fit_ood(layers, features)
    sample_scores = score_numpy(stats, features)
    out = tmp_path_factory.mktemp("tiny_model")
    card = build_card(
        name="tiny-test-model",
        version="0.0.1",
        backbone="tiny",
        input_size=64,
        threshold=0.5,
        threshold_rule="fixed 0.5 (test model)",
        gradcam_layer="backbone/top_activation",
        extra={
            "subtype": {
                "classes": ["bacterial", "viral"],
                "threshold": {"value": 0.5, "rule": "fixed 0.5 (test model)"},
            },
            "refusal": {
                "limit": float(sample_scores.max() * 1.5),
                "method": "test model: fitted on the samples",
                "rule": "1.5x the largest sample score",
            },
        },
    )
    rng = np.random.default_rng(0)
    export_model_folder(model, out, card, rng.uniform(0, 255, (4, 64, 64, 3)).astype(np.float32), ood=stats)
    return out


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    if not (BUNDLED_MODEL_DIR / "model_card.json").is_file():
        pytest.skip("the bundled model (resources/model) has not been exported yet")
    return BUNDLED_MODEL_DIR


@pytest.fixture(scope="session")
def dataset_dir() -> Path:
    if not (DATASET_DIR / "train" / "NORMAL").is_dir():
        pytest.skip(f"needs the full dataset at {DATASET_DIR} (not available on this machine)")
    return DATASET_DIR


# Tests that run the app's own event loop (run_gui -> app.exec()) go last: after that loop has quit,
# thread-pool tasks of later windows in the same process never deliver their results (the image task
# stays active and no signal arrives; seen on main too), so any GUI test collected after them hangs.
_RUNS_THE_APP_LOOP = ("test_run_gui_opens_command_line_paths_and_installs_the_excepthook",)


def pytest_collection_modifyitems(session, config, items) -> None:  # pytest hook
    items.sort(key=lambda item: item.name in _RUNS_THE_APP_LOOP)  # stable: everything else keeps its order
