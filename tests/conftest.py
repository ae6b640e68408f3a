"""Shared fixtures: real sample images, a tiny real exported model, dataset location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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


@pytest.fixture(autouse=True)
def _private_config_dir(tmp_path_factory, monkeypatch):
    """Site profiles live in the user's config folder: tests get their own, never the real one."""
    monkeypatch.setenv("PNEUMO_DESKTOP_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real exported model folder (tiny random backbone, input 64) built by the trainer's exporter."""
    import keras

    from trainer.backbones import build_backbone
    from trainer.card import build_card
    from trainer.export import export_model_folder
    from trainer.model import build_classifier

    keras.utils.set_random_seed(1234)
    backbone, _ = build_backbone("tiny", 64, None)
    model = build_classifier(backbone)
    out = tmp_path_factory.mktemp("tiny_model")
    card = build_card(
        name="tiny-test-model", version="0.0.1", backbone="tiny", input_size=64, threshold=0.5,
        threshold_rule="fixed 0.5 (test model)", gradcam_layer="backbone/top_activation",
    )
    rng = np.random.default_rng(0)
    export_model_folder(model, out, card, rng.uniform(0, 255, (4, 64, 64, 3)).astype(np.float32))
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
