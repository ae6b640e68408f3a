"""Inverted X-rays (a MONOCHROME1/2 mix-up) are refused with their own reason; upright films are not."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.runtime import INVERTED_REASON, PneumoniaModel


@pytest.fixture(scope="module")
def model(bundled_model_dir) -> PneumoniaModel:
    loaded = PneumoniaModel.load(bundled_model_dir)
    if loaded.card.refusal is None or loaded.card.refusal.inversion_gate is None:
        pytest.fail("the bundled model's card has no inversion check")
    return loaded


def test_inverted_samples_are_refused_as_inverted_and_upright_ones_are_not(model, sample_paths) -> None:
    images = [load_image(p) for p in sample_paths[:6]]
    upright = model.predict(images)
    inverted = model.predict([replace(image, grey=255 - image.grey) for image in images])
    assert all(p.refusal_reason != INVERTED_REASON for p in upright)
    assert [p.refused for p in inverted] == [True] * len(images)
    assert {p.refusal_reason for p in inverted} == {INVERTED_REASON}
    assert "photometric interpretation" in INVERTED_REASON


def test_score_anyway_scores_an_inverted_image_and_marks_it(model, sample_paths) -> None:
    image = load_image(sample_paths[0])
    [result] = model.predict([replace(image, grey=255 - image.grey)], refuse=False)
    assert not result.refused and result.probability is not None
    assert result.overridden and result.refusal_reason == INVERTED_REASON


def test_the_check_runs_only_where_the_card_asks(bundled_model_dir, sample_paths, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(bundled_model_dir, folder)
    card_path = folder / mc.CARD_FILENAME
    card = json.loads(card_path.read_text())
    del card["refusal"]["inversion_check"]
    card_path.write_text(json.dumps(card))
    mc.write_manifest(folder)  # a deliberate edit: its checksum follows
    model = PneumoniaModel.load(folder)
    assert model.card.refusal is not None and model.card.refusal.inversion_gate is None
    image = load_image(sample_paths[0])
    [result] = model.predict([replace(image, grey=255 - image.grey)], refuse=False)
    assert result.refusal_reason != INVERTED_REASON


def test_a_bad_gate_makes_the_card_malformed(bundled_model_dir) -> None:
    card = json.loads((bundled_model_dir / mc.CARD_FILENAME).read_text())
    card["refusal"]["inversion_check"]["gate"] = -1
    with pytest.raises(mc.ModelIntegrityError):
        mc.ModelCard.from_dict(card)


def test_a_few_suspects_are_checked_one_by_one_with_the_same_verdict(model, sample_paths) -> None:
    import numpy as np

    # a batch mixing upright and inverted films: the inverted ones, and any upright film at the gate, are suspects
    images = [load_image(p) for p in sample_paths[:5]]
    inputs = np.stack([model.prepare(i) for i in images] + [model.prepare(255 - i.grey) for i in images[:2]])
    calls: list[tuple[str, int]] = []
    engine = model._engine
    model.run(inputs[:1], maps=False)  # sets up the score signature's runner (at its first use)
    names = ("_runner", "_batch_runner", "_score_runner", "_batch_score_runner")
    runners = {name: getattr(engine, name) for name in names}

    def counting(name):
        def run(**inputs_by_name):
            calls.append((name, next(iter(inputs_by_name.values())).shape[0]))
            return runners[name](**inputs_by_name)
        return run

    for name in names:
        if runners[name] is not None:
            setattr(engine, name, counting(name))
    try:
        raw = model.run(inputs)
    finally:
        for name in names:
            setattr(engine, name, runners[name])
    singles = [bool(model.run(inputs[i : i + 1]).looks_inverted[0]) for i in range(len(inputs))]
    assert raw.looks_inverted is not None and raw.looks_inverted.tolist() == singles
    assert singles[-2:] == [True, True] and not any(singles[:5])
    # the short batch (7 < the batch size), then the second inference of each suspect: image by image through
    # the single-image interpreter, never a padded batch, and without the map (the score signature, when the
    # model has it)
    assert len(inputs) < model.batch_size
    batch, suspects = calls[: len(inputs)], calls[len(inputs):]
    assert batch == [("_runner", 1)] * len(inputs)
    second = "_score_runner" if runners["_score_runner"] is not None else "_runner"
    assert suspects and set(suspects) == {(second, 1)}
