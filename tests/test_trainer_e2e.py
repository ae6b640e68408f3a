"""The trainer end to end on a tiny real subset, resume, local weights files, EfficientNet-Lite0 conversion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumo_desktop.core import model_card as mc
from tests.test_trainer_data import make_dataset_folder


@pytest.mark.slow
def test_train_two_stages_evaluate_export_and_resume(tmp_path, sample_paths):
    from trainer.cli import main
    from trainer.export import tflite_outputs

    root = make_dataset_folder(tmp_path / "data", sample_paths, copies=3)
    (root / "train" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"corrupt")
    run_dir = tmp_path / "run"
    export_dir = run_dir / "export"  # as scripts/train_bundled.sh lays it out
    argv = ["train", "--data", str(root), "--run-dir", str(run_dir), "--backbone", "tiny", "--weights", "none",
            "--input-size", "64", "--epochs-stage1", "1", "--epochs-stage2", "1", "--batch-size", "8",
            "--val-fraction", "0.3", "--export", str(export_dir)]
    assert main(argv) == 0

    # integrity report lists the planted file; split keeps patients apart
    report = (run_dir / "report" / "integrity_report.csv").read_text()
    assert "IM-9999-0001.jpeg" in report
    split_rows = [line.split(",") for line in (run_dir / "report" / "split.csv").read_text().splitlines()[1:]]
    sides = {}
    for _, _, patient, side in split_rows:
        sides.setdefault(patient, set()).add(side)
    assert all(len(s) == 1 for s in sides.values()) and {"train", "val"} <= set().union(*sides.values())

    for name in ("roc_val.png", "confusion_val.png", "training_curves.png", "calibration_val.png", "metrics.json"):
        assert (run_dir / "report" / name).stat().st_size > 0
        assert (export_dir / "report" / name).is_file()
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert set(metrics["validation"]) >= {"accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc",
                                          "confusion"}

    card = mc.load_model_card(export_dir)
    mc.verify_artifacts(export_dir, card)
    raw = json.loads((export_dir / mc.CARD_FILENAME).read_text())
    assert raw["training"]["data_manifest_sha256"] and raw["training"]["excluded"] == 1
    assert raw["threshold"]["value"] == pytest.approx(metrics["validation"]["threshold"])
    assert "sensitivity >= 0.95" in raw["threshold"]["rule"]

    # the export runs in LiteRT
    out = tflite_outputs(export_dir / mc.TFLITE_FILENAME, np.full((2, 64, 64, 3), 100, np.float32))
    assert out[mc.OUTPUT_PROBABILITY].shape == (2, 1)

    # rerunning resumes: both stages are recorded as done and are not trained again
    state = json.loads((run_dir / "state.json").read_text())
    assert state["stage1"] and state["stage2"]
    log_lines = (run_dir / "log_stage1.csv").read_text().splitlines()
    assert main(argv) == 0
    assert (run_dir / "log_stage1.csv").read_text().splitlines() == log_lines

    # compare reads a run folder and a model folder alike, writes the table and records it in the card
    doc = tmp_path / "comparison.md"
    dev = make_dataset_folder(tmp_path / "dev", sample_paths, copies=1) / "train"  # a NORMAL/PNEUMONIA folder
    assert main(["compare", str(run_dir), f"exported={export_dir}", "--dev", str(dev), "--doc", str(doc),
                 "--card", str(export_dir)]) == 0
    table_rows = [line for line in doc.read_text().splitlines() if line.startswith("| run") or line.startswith("| exp")]
    assert len(table_rows) == 2
    selection = json.loads((export_dir / mc.CARD_FILENAME).read_text())["model_selection"]
    assert [c["name"] for c in selection["candidates"]] == ["run", "exported"]
    assert selection["candidates"][0]["val_roc_auc"] == pytest.approx(metrics["validation"]["roc_auc"])
    assert selection["candidates"][0]["dev_roc_auc"] == selection["candidates"][1]["dev_roc_auc"]  # same model
    mc.verify_artifacts(export_dir, mc.load_model_card(export_dir))  # the card's record does not touch artefacts


@pytest.mark.slow
def test_from_scratch_trains_the_whole_backbone_and_its_batchnorm(tmp_path, sample_paths):
    import keras

    from trainer.backbones import build_backbone
    from trainer.cli import main
    from trainer.model import build_classifier

    root = make_dataset_folder(tmp_path / "data", sample_paths, copies=3)
    run_dir = tmp_path / "scratch"
    argv = ["train", "--data", str(root), "--run-dir", str(run_dir), "--backbone", "tiny", "--weights", "none",
            "--from-scratch", "--input-size", "64", "--epochs-stage1", "1", "--epochs-stage2", "1",
            "--batch-size", "8", "--val-fraction", "0.3", "--seed", "7"]
    assert main(argv) == 0

    keras.utils.set_random_seed(7)  # the trainer's seed: the same initial backbone
    initial = build_classifier(build_backbone("tiny", 64, None)[0], batchnorm_trains=True)
    trained = build_classifier(build_backbone("tiny", 64, None)[0], batchnorm_trains=True)
    trained.load_weights(run_dir / json.loads((run_dir / "state.json").read_text())["stage1"]["weights"])
    before, after = initial.get_layer("backbone"), trained.get_layer("backbone")
    assert not np.allclose(before.get_layer("conv0").get_weights()[0], after.get_layer("conv0").get_weights()[0])
    moving_mean = after.get_layer("bn0").moving_mean.numpy()
    assert np.abs(moving_mean).max() > 1e-3  # BatchNorm statistics were learned, not left at their zero start


def test_local_weights_file_is_loaded(tmp_path):
    from trainer.backbones import build_backbone

    original, _ = build_backbone("tiny", 64, None)
    path = tmp_path / "tiny.weights.h5"
    original.save_weights(path)
    loaded, source = build_backbone("tiny", 64, path)
    for a, b in zip(original.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert source.sha256 == mc.sha256_of_file(path) and source.path == str(path)
    with pytest.raises(FileNotFoundError):
        build_backbone("tiny", 64, tmp_path / "missing.h5")


def test_densenet_without_download_fails_clearly(monkeypatch):
    import keras

    from trainer.backbones import build_backbone

    def offline(*args, **kwargs):
        if kwargs.get("weights") == "imagenet":
            raise OSError("network unreachable")
        return real(*args, **kwargs)

    real = keras.applications.DenseNet121
    monkeypatch.setattr(keras.applications, "DenseNet121", offline)
    with pytest.raises(RuntimeError, match="--weights"):
        build_backbone("densenet121", 64, None)


def _imagenet_photo(skimage_data, name: str, size: int) -> np.ndarray:
    """One of scikit-image's sample photos, centre-cropped square and resized: a (1, size, size, 3) batch."""
    import cv2

    img = getattr(skimage_data, name)()
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)[None]


def test_efficientnet_lite0_port_reproduces_imagenet_predictions():
    """The Keras port with the converted PyTorch weights recognises ImageNet photos as the original does."""
    from tests.conftest import WEIGHTS_DIR

    pth = WEIGHTS_DIR / "efficientnet-lite0-57934424.pth"
    if not pth.is_file():
        pytest.skip(f"needs {pth} (the pretrained weights are not in the repository)")
    skimage_data = pytest.importorskip("skimage.data")

    from trainer.efficientnet_lite import efficientnet_lite_from_pth

    model = efficientnet_lite_from_pth(pth, (224, 224, 3), include_top=True)
    expected = {"chelsea": (285, 0.405), "coffee": (967, 0.941)}  # PyTorch reference: Egyptian cat, espresso
    for name, (cls, prob) in expected.items():
        x = _imagenet_photo(skimage_data, name, 224)
        logits = model.predict(x, verbose=0)[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        assert int(np.argmax(p)) == cls
        assert p[cls] == pytest.approx(prob, abs=0.02)


def test_efficientnet_lite2_port_recognises_imagenet_photos():
    """Lite2 (its own stage table, the same converter): the converted weights name the photos' classes."""
    from tests.conftest import WEIGHTS_DIR

    pth = WEIGHTS_DIR / "efficientnet-lite2-9656183e.pth"
    if not pth.is_file():
        pytest.skip(f"needs {pth} (the pretrained weights are not in the repository)")
    skimage_data = pytest.importorskip("skimage.data")

    from trainer.efficientnet_lite import efficientnet_lite_from_pth

    model = efficientnet_lite_from_pth(pth, (260, 260, 3), "efficientnet_lite2", include_top=True)
    assert model.count_params() == 6_150_232 - 64  # the state dict less its 64 BatchNorm batch counters
    cats = range(281, 286)  # ImageNet's domestic cats
    for name, classes in {"chelsea": cats, "coffee": (967,)}.items():  # espresso
        x = _imagenet_photo(skimage_data, name, 260)
        logits = model.predict(x, verbose=0)[0]
        assert int(np.argmax(logits)) in classes


@pytest.mark.slow
def test_recipe_with_subtype_head_development_set_and_refusal_statistics(tmp_path, sample_paths):
    """The v2 path: a recipe file, epochs chosen on a development folder, the subtype head and the OOD score
    exported in the graph, the limit chosen on validation, all recorded in the card."""
    from trainer.cli import main
    from trainer.export import tflite_outputs

    root = make_dataset_folder(tmp_path / "data", sample_paths, copies=3)
    dev = make_dataset_folder(tmp_path / "dev", sample_paths[::-1], copies=1, size=140) / "train"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'data_root = "{root}"\nbackbone = "tiny"\nweights = "none"\ninput_size = 64\nbatch_size = 8\n'
        f'epochs_stage1 = 1\nepochs_stage2 = 1\nval_fraction = 0.3\nsubtype_head = true\ndev_root = "{dev}"\n'
        '[augment]\ncrop_scale_min = 0.5\ncrop_aspect = 1.3333\ngamma = 1.25\n'
    )
    run_dir, export_dir = tmp_path / "run", tmp_path / "run" / "export"
    assert main(["train", "--recipe", str(recipe), "--run-dir", str(run_dir), "--export", str(export_dir)]) == 0

    log_header = (run_dir / "log_stage1.csv").read_text().splitlines()[0].split(",")
    assert {"dev_auc", "val_auc", "dev_viral_auc"} <= set(log_header)
    raw = json.loads((export_dir / mc.CARD_FILENAME).read_text())
    assert raw["training"]["recipe"] == recipe.read_text() and raw["training"]["selection"] == "dev_auc"
    assert "test half A (development)" in raw["threshold"]["rule"]
    assert raw["subtype"]["classes"] == ["bacterial", "viral"] and 0 <= raw["subtype"]["threshold"]["value"] <= 1
    assert raw["refusal"]["limit"] > 0 and raw["refusal"]["refused_share"]["validation"] <= 0.01 + 1e-9
    # what --self-test reproduces: every sample's Keras probability, recorded in the card at export
    assert set(raw["sample_reference"]["images"]) == {p.name for p in sample_paths}

    rng = np.random.default_rng(3)
    noise = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    from pneumo_desktop.core.imaging import load_image
    from pneumo_desktop.core.preprocess import prepare_input

    xrays = np.stack([prepare_input(load_image(p).grey, 64) for p in sample_paths[:2]]).astype(np.float32)
    out = tflite_outputs(export_dir / mc.TFLITE_FILENAME, np.concatenate([xrays, noise]))
    assert out[mc.OUTPUT_P_VIRAL].shape == (4, 1) and out[mc.OUTPUT_OOD_SCORE].shape == (4, 1)
    scores = out[mc.OUTPUT_OOD_SCORE].ravel()
    assert scores[2:].min() > scores[:2].max()  # noise lies further from the training X-rays than X-rays do
