"""The explanation audit's measures on fixtures where the answer is known (tests/audit_fakes.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pneumo_desktop.core import explanation_audit as ea
from pneumo_desktop.core.body_mask import body_mask
from pneumo_desktop.core.cam_methods import gradcam_pp_weights, raw_map
from tests.audit_fakes import ellipse_mask, film, labelled_folder, lesion_model


def test_constant_map_puts_the_area_share_outside_the_body() -> None:
    grey = film()
    mask = body_mask(grey)
    # the generated body is found (a coarse silhouette: most pixels agree with the true ellipse)
    assert np.mean(mask == ellipse_mask()) > 0.95
    cam = np.full(grey.shape, 0.7, np.float32)
    assert ea.mass_share(cam, ~mask) == pytest.approx(float((~mask).mean()), abs=1e-9)


def test_random_map_is_near_the_area_share_and_a_map_on_the_body_is_all_inside() -> None:
    grey = film(320, 256)
    mask = body_mask(grey)
    cam = np.random.default_rng(3).uniform(0, 1, grey.shape).astype(np.float32)
    assert ea.mass_share(cam, ~mask) == pytest.approx(float((~mask).mean()), abs=0.01)
    inside = np.where(mask, 1.0, 0.0).astype(np.float32)
    assert ea.mass_share(inside, ~mask) == 0.0
    assert ea.body_share(inside, grey) == pytest.approx(1.0)
    assert math.isnan(ea.mass_share(np.zeros_like(cam), ~mask))  # no evidence: nothing to place


def test_deletion_follows_the_true_map_faster_than_random_and_a_wrong_map_slower(tmp_path: Path) -> None:
    grey = film(lesion=True)
    true = ea.audit_image(lesion_model(tmp_path), grey, Path("x.png"), True, shortcuts=False)
    wrong = ea.audit_image(lesion_model(tmp_path, wrong_map=True), grey, Path("x.png"), True, shortcuts=False)
    # the true map's top 4 cells hold all the evidence: greying 6 of them kills the score; random cells rarely do
    assert true.drop("deletion/map/gradcam") > 2.5 * max(true.drop("deletion/random"), 1e-3)
    assert true.area("deletion/map/gradcam") < true.area("deletion/random") < true.area("deletion/inverse/gradcam")
    assert true.area("insertion/map/gradcam") > true.area("insertion/random")
    # it greys everything but the lesion first: the score does not fall
    assert wrong.drop("deletion/map/gradcam") < 0.05 * true.drop("deletion/map/gradcam")
    assert wrong.area("deletion/map/gradcam") > true.area("deletion/map/gradcam")
    # where the evidence lies: the lesion is inside the body
    assert true.mass_outside["gradcam"] < 0.01


def test_summary_ratio_and_intervals_on_a_labelled_set(tmp_path: Path) -> None:
    folder = labelled_folder(tmp_path / "data", count=3)
    from pneumo_desktop.core.evaluation import load_labels

    items = [(i.path, i.positive) for i in load_labels(folder)]
    run = ea.audit_images(lesion_model(tmp_path), items, methods=("gradcam", "gradcam++"))
    summary = ea.summarise(run, resamples=200)
    ratio = summary["figures"]["gradcam/top_random_drop_ratio_pneumonia"]
    assert ratio["value"] > 2.5 and ratio["ci95"][0] <= ratio["value"] <= ratio["ci95"][1]
    outside = summary["figures"]["gradcam/mass_outside_body"]
    assert outside["value"] < 0.05
    area = summary["figures"]["outside_area_share"]["value"]
    assert area == pytest.approx(float((~ellipse_mask()).mean()), abs=0.05)
    # the fake model reads the lesion: flattening the body destroys it, flattening the background does not
    aucs = summary["shortcut_roc_auc"]
    assert aucs["plain"]["value"] == 1.0 and aucs["background_flattened"]["value"] == 1.0
    assert aucs["body_flattened"]["value"] == 0.5


def test_shortcut_model_keeps_its_auc_with_the_body_flattened(tmp_path: Path) -> None:
    """A model that reads only a corner marker: the body-flattened AUC stays, the background-flattened falls."""
    model = lesion_model(tmp_path, background_shortcut=True)
    images = [ea.audit_image(model, film(marker=positive, seed=i), Path(f"{i}.png"), positive,
                             faithfulness=False)
              for i, positive in enumerate([True, True, True, False, False, False])]
    aucs = ea.shortcut_aucs(images, resamples=100)
    assert aucs["plain"]["value"] == 1.0
    assert aucs["body_flattened"]["value"] == 1.0
    assert aucs["background_flattened"]["value"] == 0.5
    assert aucs["border_masked"]["value"] == 0.5


def test_gradcam_pp_matches_the_per_position_formula_and_drops_negative_channels() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 6, (7, 7, 5)).astype(np.float32)
    g = np.array([0.02, -0.01, 0.005, 0.0, 0.03], np.float32)
    # Grad-CAM++ (Chattopadhay et al.) with the gradient given at every position (here the same everywhere)
    grads = np.broadcast_to(g, a.shape).astype(np.float64)
    alpha = grads**2 / np.where(2 * grads**2 + a.sum(axis=(0, 1)) * grads**3 != 0,
                                2 * grads**2 + a.sum(axis=(0, 1)) * grads**3, 1.0)
    expected = (alpha * np.maximum(grads, 0)).sum(axis=(0, 1))
    np.testing.assert_allclose(gradcam_pp_weights(a, g), expected, rtol=1e-5)
    assert gradcam_pp_weights(a, g)[1] == 0.0 and gradcam_pp_weights(a, g)[3] == 0.0
    cam = raw_map(a, g, "gradcam++")
    assert cam.shape == (7, 7) and cam.max() == pytest.approx(1.0) and cam.min() >= 0.0
    with pytest.raises(ValueError, match="unknown map method"):
        raw_map(a, g, "nope")


def test_map_trust_line() -> None:
    from pneumo_desktop.core.model_card import ExplanationAuditSpec

    assert ea.map_trust_text(None, 0.81) == (
        "Heat map not audited for this model; this map: 81% of its weight inside the body.")
    spec = ExplanationAuditSpec.from_dict({"data": "test half A (development)", "mass_outside_body": 0.23,
                                           "top_random_drop_ratio": 1.7, "randomisation_passed": True})
    text = ea.map_trust_text(spec, None)
    assert text.startswith("Heat-map reliability: weak (audit on test half A (development): 23% of map weight")
    assert "1.7× random" in text and "no evidence to place" in text
    good = ExplanationAuditSpec.from_dict({"data": "d", "mass_outside_body": 0.05, "top_random_drop_ratio": 3.0,
                                           "randomisation_passed": True})
    assert ea.reliability(good) == "good"


def test_model_card_explanation_audit_section(fake_card) -> None:
    from pneumo_desktop.core.model_card import ModelIntegrityError

    assert fake_card().explanation_audit is None
    card = fake_card(explanation_audit={"data": "test half A (development)", "mass_outside_body": 0.2,
                                        "body_flattened_roc_auc": 0.9})
    assert card.explanation_audit.mass_outside_body == 0.2 and card.explanation_audit.method == "gradcam"
    with pytest.raises(ModelIntegrityError, match="mass_outside_body"):
        fake_card(explanation_audit={"data": "x", "mass_outside_body": 1.5})
    with pytest.raises(ModelIntegrityError, match="missing field"):
        fake_card(explanation_audit={"mass_outside_body": 0.1})


def test_with_body_share_fills_the_explanation(tmp_path: Path) -> None:
    from pneumo_desktop.core.imaging import LoadedImage

    grey = film(lesion=True)
    model = lesion_model(tmp_path)
    image = LoadedImage(path=tmp_path / "x.png", grey=grey, format="PNG", bit_depth=8, width=grey.shape[1],
                        height=grey.shape[0])
    explanation = ea.with_body_share(model.explain(image), grey)
    assert explanation.body_share is not None and explanation.body_share > 0.99


def test_audit_cli_end_to_end(tmp_path: Path, bundled_model_dir: Path) -> None:
    from pneumo_desktop.cli import main

    folder = labelled_folder(tmp_path / "data", count=1, height=200, width=180)
    out = tmp_path / "report"
    code = main(["audit-explanations", str(folder), "-o", str(out), "--model", str(bundled_model_dir),
                 "--randomisation-images", "1", "--resamples", "50", "-q"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"audit.csv", "metrics.json", "report.html"}
    data = json.loads((out / "metrics.json").read_text())
    audit = data["audit"]
    assert audit["images"] == {"audited": 2, "pneumonia": 1, "normal": 1, "errors": 0}
    assert set(audit["shortcut_roc_auc"]) == set(ea.VARIANTS)
    assert len(audit["randomisation"]["stages"]) >= 3
    for name in ("gradcam/mass_outside_body", "gradcam/top_random_drop_ratio", "random/deletion_auc"):
        assert name in audit["figures"]
    rows = (out / "audit.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("path,label,probability,logit")
    page = (out / "report.html").read_text()
    assert "Does the map read the lungs?" in page and page.count("data:image/png;base64,") >= 9
    assert main(["audit-explanations", str(tmp_path / "missing")]) == 2


def test_randomisation_decorrelates_the_bundled_models_maps(bundled_model_dir: Path) -> None:
    from pneumo_desktop.core.imaging import load_image
    from pneumo_desktop.core.model_randomisation import passes, randomisation_test, spearman, ssim
    from pneumo_desktop.core.runtime import PneumoniaModel
    from tests.imaging_helpers import sample_paths

    a = np.random.default_rng(1).uniform(size=(56, 56))
    assert spearman(a, a) == pytest.approx(1.0) and ssim(a, a) == pytest.approx(1.0)
    model = PneumoniaModel.load(bundled_model_dir, batch_size=4)
    inputs = np.stack([model.prepare(load_image(p)) for p in sample_paths()])  # all 12: 4 are too few to be stable
    stages = randomisation_test(model, inputs, resamples=100)
    assert [s.name for s in stages][:2] == ["head", "top_conv"]
    assert all(s.spearman < 0.5 for s in stages)  # rank order lost at every stage of the cascade
    assert passes(stages)
