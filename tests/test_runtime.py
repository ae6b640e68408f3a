"""PneumoniaModel on a real exported (tiny) model: integrity checks, batching, thread safety, results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.model_card import ModelIntegrityError
from pneumo_desktop.core.preprocess import prepare_input
from pneumo_desktop.core.runtime import Explanation, PneumoniaModel, Prediction


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> PneumoniaModel:
    return PneumoniaModel.load(tiny_model_dir)


@pytest.fixture(scope="module")
def images(sample_paths: list[Path]):
    return [load_image(p) for p in sample_paths]


@pytest.fixture()
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _direct_litert(model_dir: Path, inputs: np.ndarray) -> np.ndarray:
    """Reference: the interpreter used directly, one image at a time."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(model_dir / mc.TFLITE_FILENAME)).get_signature_runner(mc.SIGNATURE_KEY)
    return np.array([runner(image=x[None])[mc.OUTPUT_PROBABILITY].item() for x in inputs])


def test_predict_matches_the_interpreter_used_directly(model, images, tiny_model_dir: Path) -> None:
    preds = model.predict(images)  # 12 images: a batch of 8 and a batch of 4
    assert len(preds) == len(images) and all(isinstance(p, Prediction) for p in preds)
    reference = _direct_litert(tiny_model_dir, np.stack([prepare_input(i.grey, 64) for i in images]))
    np.testing.assert_allclose([p.probability for p in preds], reference, rtol=1e-5, atol=1e-6)
    for img, p in zip(images, preds):
        assert p.path == img.path
        assert p.threshold == model.card.threshold
        assert p.label == ("PNEUMONIA" if p.probability >= p.threshold else "NORMAL")
        assert (p.model_name, p.model_version) == (model.card.name, model.card.version)
        assert p.model_sha256 == mc.sha256_of_file(tiny_model_dir / mc.TFLITE_FILENAME)


def test_batch_size_does_not_change_results(model, images) -> None:
    batched = [p.probability for p in model.predict(images)]
    single = [model.predict([img])[0].probability for img in images]
    np.testing.assert_allclose(batched, single, rtol=1e-6, atol=1e-7)


def test_alternating_single_and_batch_requests_never_resize_an_interpreter(tiny_model_dir: Path, images) -> None:
    """A resize re-allocates tensors under the GIL (a GUI stall), so each interpreter keeps its shape."""
    from pneumo_desktop.core.runtime import LiteRTEngine

    engine = LiteRTEngine(tiny_model_dir / mc.TFLITE_FILENAME, 64, num_threads=1, batch_size=8)
    inputs = np.stack([prepare_input(i.grey, 64) for i in images[:5]])
    whole = engine(inputs)[mc.OUTPUT_PROBABILITY]
    assert whole.shape == (5, 1)  # padded to 8 inside, trimmed back
    for i in range(5):
        np.testing.assert_allclose(engine(inputs[i : i + 1])[mc.OUTPUT_PROBABILITY], whole[i : i + 1], atol=1e-6)
        engine(inputs[: i + 1])
    assert engine._runner.get_input_details()[mc.INPUT_NAME]["shape"][0] == 1
    assert engine._batch_runner.get_input_details()[mc.INPUT_NAME]["shape"][0] == 8


def test_threshold_override_changes_only_the_label(model, images) -> None:
    p = model.predict(images[:1])[0]
    low = model.predict(images[:1], threshold=0.0)[0]
    high = model.predict(images[:1], threshold=1.0)[0]
    assert low.probability == high.probability == p.probability
    assert (low.label, low.threshold) == ("PNEUMONIA", 0.0)
    assert high.label == ("PNEUMONIA" if p.probability >= 1.0 else "NORMAL")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            model.predict(images[:1], threshold=bad)


def test_explain_returns_cam_at_original_resolution(model, images) -> None:
    for img in images[:3]:
        exp = model.explain(img)
        assert isinstance(exp, Explanation)
        assert exp.cam is not None
        assert exp.cam.shape == (img.height, img.width) and exp.cam.dtype == np.float32
        assert exp.cam.min() >= 0.0 and exp.cam.max() <= 1.0
        assert exp.prediction == model.predict([img])[0]


def test_predictions_are_thread_safe(model, images) -> None:
    expected = [p.probability for p in model.predict(images)]
    errors: list[BaseException] = []
    results: dict[int, list[float]] = {}

    def work(k: int) -> None:
        try:
            order = images[k:] + images[:k]  # different batch contents in every thread
            got = [p.probability for p in model.predict(order)]
            results[k] = got[len(images) - k :] + got[: len(images) - k]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results.values():
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_default_threads_are_the_cpu_count(model) -> None:
    assert model._engine.num_threads == (os.cpu_count() or 1)


# ------------------------------------------------------------------ integrity


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="does not exist"):
        PneumoniaModel.load(tmp_path / "nowhere")


def test_folder_without_card(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match=r"model_card\.json"):
        PneumoniaModel.load(tmp_path)


def test_missing_tflite(model_copy: Path) -> None:
    (model_copy / mc.TFLITE_FILENAME).unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        PneumoniaModel.load(model_copy)


def test_corrupted_tflite(model_copy: Path) -> None:
    path = model_copy / mc.TFLITE_FILENAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="corrupted"):
        PneumoniaModel.load(model_copy)


def _rewrite_card(model_dir: Path, **changes) -> None:
    path = model_dir / mc.CARD_FILENAME
    card = json.loads(path.read_text())
    card.update(changes)
    card["artifacts"][mc.TFLITE_FILENAME]["sha256"] = mc.sha256_of_file(model_dir / mc.TFLITE_FILENAME)
    path.write_text(json.dumps(card))
    mc.write_manifest(model_dir)  # a deliberate edit: the manifest follows it (an unnoticed one fails the load)


def test_invalid_tflite_with_matching_hash(model_copy: Path) -> None:
    (model_copy / mc.TFLITE_FILENAME).write_bytes(b"not a flatbuffer at all" * 10)
    _rewrite_card(model_copy)
    with pytest.raises(ModelIntegrityError, match="not a valid TFLite model"):
        PneumoniaModel.load(model_copy)


def test_card_input_size_must_match_the_graph(model_copy: Path) -> None:
    _rewrite_card(model_copy, input_size=128)
    with pytest.raises(ModelIntegrityError, match="128"):
        PneumoniaModel.load(model_copy)


def test_malformed_card(model_copy: Path) -> None:
    (model_copy / mc.CARD_FILENAME).write_text("{not json")
    with pytest.raises(ModelIntegrityError, match="cannot read"):
        PneumoniaModel.load(model_copy)


def test_packaged_model_without_keras_file_loads(model_copy: Path, images) -> None:
    (model_copy / mc.KERAS_FILENAME).unlink()  # a packaged app ships only model.tflite + card
    assert PneumoniaModel.load(model_copy).predict(images[:2])


def test_runtime_never_imports_tensorflow(tiny_model_dir: Path, sample_paths: list[Path]) -> None:
    """What runs, not what is written: our own imports are import-linter's contracts (pyproject.toml, `make lint`);
    this checks that the libraries the runtime loads (LiteRT, OpenCV, pydicom) pull in no TensorFlow or Qt either."""
    code = (
        "import sys; from pathlib import Path\n"
        "from pneumo_desktop.core.runtime import PneumoniaModel\n"
        "from pneumo_desktop.core.imaging import load_image\n"
        "from pneumo_desktop.core import batch, overlay\n"
        f"m = PneumoniaModel.load(Path({str(tiny_model_dir)!r}))\n"
        f"m.explain(load_image(Path({str(sample_paths[0])!r})))\n"
        "bad = [n for n in ('tensorflow', 'keras', 'PySide6') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ the bundled model


def test_bundled_model_loads_by_default_and_scores_samples(bundled_model_dir: Path, images) -> None:
    model = PneumoniaModel.load()
    assert model.model_dir.resolve() == bundled_model_dir.resolve()
    preds = model.predict(images)
    assert all(p.probability is not None and 0.0 <= p.probability <= 1.0 for p in preds)
