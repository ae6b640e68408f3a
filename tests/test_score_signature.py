"""The score signature: the forward pass alone, for scoring that needs no map (trainer/score_signature.py).

Checked on a real exported model (the tiny backbone's, conftest.tiny_model_dir) and on the bundled model when
it has the signature: same outputs as the full signature, shared weights, fewer operators; the runtime uses
it when no map is asked for and still reads a file without it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.runtime import PneumoniaModel

schema = pytest.importorskip("tensorflow.lite.python.schema_py_generated")


def _model(path: Path):
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))


def _write(model, path: Path) -> None:
    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def _retag(folder: Path) -> None:
    """Record the deliberately edited model.tflite's hash in the card and the manifest, as an export would."""
    import json

    card_path = folder / mc.CARD_FILENAME
    card = json.loads(card_path.read_text())
    tflite = folder / mc.TFLITE_FILENAME
    card["artifacts"][mc.TFLITE_FILENAME] = {"sha256": mc.sha256_of_file(tflite), "bytes": tflite.stat().st_size}
    card_path.write_text(json.dumps(card, indent=2))
    mc.write_manifest(folder)


def test_the_score_signature_is_the_forward_pass_on_the_same_weights(tiny_model_dir: Path, sample_paths) -> None:
    model = _model(tiny_model_dir / mc.TFLITE_FILENAME)
    signatures = {s.signatureKey.decode(): s for s in model.signatureDefs}
    assert set(signatures) == {mc.SIGNATURE_KEY, mc.SCORE_SIGNATURE_KEY}
    full, score = (model.subgraphs[signatures[k].subgraphIndex] for k in (mc.SIGNATURE_KEY, mc.SCORE_SIGNATURE_KEY))
    assert {t.name.decode() for t in signatures[mc.SCORE_SIGNATURE_KEY].outputs} == set(mc.SCORE_OUTPUTS)
    assert 0 < len(score.operators) < len(full.operators)  # no backward pass, no map outputs
    weights = {t.buffer for t in score.tensors if model.buffers[t.buffer].data is not None}
    assert weights and weights <= {t.buffer for t in full.tensors}  # shared, not copied

    loaded = PneumoniaModel.load(tiny_model_dir, batch_size=4)
    images = [load_image(p) for p in sample_paths[:6]]
    inputs = np.stack([loaded.prepare(img) for img in images])
    with_maps, without = loaded.run(inputs), loaded.run(inputs, maps=False)
    assert without.feature_map is None and without.cam_weights is None
    np.testing.assert_array_equal(without.probability, with_maps.probability)
    np.testing.assert_array_equal(without.p_viral, with_maps.p_viral)
    np.testing.assert_array_equal(without.ood_score, with_maps.ood_score)
    with pytest.raises(ValueError, match="without maps"):
        without.cam(0, 10, 10)
    # predict (no maps) and explain (maps) give the same predictions
    assert loaded.predict(images) == [e.prediction for e in loaded.explain_many(images)]


def test_a_file_without_the_score_signature_still_scores(tiny_model_dir: Path, tmp_path: Path, sample_paths) -> None:
    folder = _copy(tiny_model_dir, tmp_path)
    model = _model(folder / mc.TFLITE_FILENAME)
    keep = [s for s in model.signatureDefs if s.signatureKey.decode() == mc.SIGNATURE_KEY]
    model.signatureDefs = keep
    model.subgraphs = model.subgraphs[:1]
    _write(model, folder / mc.TFLITE_FILENAME)
    _retag(folder)
    old = PneumoniaModel.load(folder, batch_size=4)
    new = PneumoniaModel.load(tiny_model_dir, batch_size=4)
    images = [load_image(p) for p in sample_paths[:5]]
    def outcome(predictions):  # everything but the file's hash
        return [(p.probability, p.label, p.status, p.ood_score, p.p_viral) for p in predictions]

    assert not old.scores_without_maps and new.scores_without_maps
    assert outcome(old.predict(images)) == outcome(new.predict(images))


def test_a_score_signature_that_disagrees_is_not_used(tiny_model_dir: Path, tmp_path: Path, sample_paths,
                                                      caplog) -> None:
    folder = _copy(tiny_model_dir, tmp_path)
    model = _model(folder / mc.TFLITE_FILENAME)
    score = next(s for s in model.signatureDefs if s.signatureKey.decode() == mc.SCORE_SIGNATURE_KEY)
    by_name = {t.name.decode(): t for t in score.outputs}
    a, b = by_name[mc.OUTPUT_PROBABILITY], by_name[mc.OUTPUT_P_VIRAL]
    a.tensorIndex, b.tensorIndex = b.tensorIndex, a.tensorIndex  # probability <-> P(viral)
    _write(model, folder / mc.TFLITE_FILENAME)
    _retag(folder)
    broken = PneumoniaModel.load(folder, batch_size=4)
    assert broken.scores_without_maps  # checked at its first use, not at load
    images = [load_image(p) for p in sample_paths[:5]]  # scored by the full signature: the right numbers
    good = PneumoniaModel.load(tiny_model_dir, batch_size=4)
    assert [p.probability for p in broken.predict(images)] == [p.probability for p in good.predict(images)]
    assert "does not give the outputs" in caplog.text and not broken.scores_without_maps


def test_the_bundled_model_scores_the_same_with_and_without_maps(bundled_model_dir: Path, sample_paths) -> None:
    model = PneumoniaModel.load(bundled_model_dir, batch_size=4)
    if not model.scores_without_maps:
        pytest.skip("the bundled model.tflite has no score signature")
    inputs = np.stack([model.prepare(load_image(p)) for p in sample_paths])
    np.testing.assert_array_equal(model.run(inputs, maps=False).probability, model.run(inputs).probability)
