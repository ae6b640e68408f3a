"""Refusal of what is not a chest X-ray (issue 12) and the bacterial/viral subtype (issue 11), app side:
model card, runtime, batch CSV, CLI, the negatives script and the refusal bench, with a fake v2 engine."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pneumo_desktop import cli
from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core import runtime
from pneumo_desktop.core.batch import CSV_COLUMNS, read_results, score_paths
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.model_card import ModelCard, ModelIntegrityError, write_manifest
from pneumo_desktop.core.runtime import PneumoniaModel
from tests.conftest import SAMPLES_DIR
from tests.refusal_fakes import (
    LIMIT,
    OOD_FAR,
    OOD_NEAR,
    REASON,
    REPO,
    FakeV2Engine,
    card_dict,
    expected_p_viral,
    expected_probability,
    fake_model,
    make_negatives_module,
)

THRESHOLD = 0.45  # splits the bundled samples under the fake engine into both labels


@pytest.fixture(scope="module")
def negatives(tmp_path_factory) -> Path:
    """A small negative set made by the repo's own script: photos, synthetic patterns, near kinds."""
    out = tmp_path_factory.mktemp("negatives")
    make_negatives_module().generate(
        out, [SAMPLES_DIR], seed=3, per_kind=2, max_side=128,
        kinds=["photo", "synthetic", "document", "xray_rotated90", "xray_inverted"],
    )
    return out


@pytest.fixture()
def xrays(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "xrays"
    folder.mkdir()
    return [Path(shutil.copy(p, folder)) for p in sorted(SAMPLES_DIR.glob("*.jpeg"))]


def negative_files(folder: Path, kind: str | None = None) -> list[Path]:
    labels = make_negatives_module().read_labels(folder)
    return [folder / item.path for item in labels if kind is None or item.kind == kind]


@pytest.fixture()
def engine(negatives: Path) -> FakeV2Engine:
    engine = FakeV2Engine()
    engine.refuse(negative_files(negatives))
    return engine


@pytest.fixture()
def model(tmp_path: Path, engine: FakeV2Engine) -> PneumoniaModel:
    return fake_model(tmp_path, engine, THRESHOLD)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        assert tuple(header) == CSV_COLUMNS
        rows = list(reader)
    assert all(len(r) == len(CSV_COLUMNS) for r in rows)
    return [dict(zip(header, r)) for r in rows]


# ------------------------------------------------------------------ model card


def test_card_sections_are_read_and_optional() -> None:
    card = ModelCard.from_dict(card_dict())
    assert card.refusal is not None and card.refusal.limit == LIMIT
    assert card.subtype is not None and card.subtype.classes == ("bacterial", "viral") and card.subtype.threshold == 0.5
    assert card.subtype.label_for(0.7) == "viral" and card.subtype.label_for(0.2) == "bacterial"
    assert card.refusal.refuses(LIMIT + 0.01) and not card.refusal.refuses(LIMIT) and card.refusal.refuses(float("nan"))
    old = ModelCard.from_dict(card_dict(v2=False))
    assert old.refusal is None and old.subtype is None
    assert (mc.OUTPUT_P_VIRAL, mc.OUTPUT_OOD_SCORE) == ("p_viral", "ood_score")


@pytest.mark.parametrize("section", [{"refusal": {"method": "no limit"}}, {"refusal": {"limit": "inf"}},
                                     {"subtype": {"classes": ["bacterial"], "threshold": {"value": 0.5}}}])
def test_malformed_sections_are_integrity_errors(section: dict) -> None:
    data = card_dict() | section
    with pytest.raises(ModelIntegrityError, match="malformed"):
        ModelCard.from_dict(data)


def test_a_card_promising_outputs_the_graph_lacks_is_refused(tmp_path: Path) -> None:
    card = ModelCard.from_dict(card_dict())
    with pytest.raises(ModelIntegrityError, match="ood_score"):
        runtime._check_optional_outputs(
            tmp_path, card, frozenset({"probability", "feature_map", "cam_weights", "p_viral"})
        )
    runtime._check_optional_outputs(
        tmp_path, card, frozenset({"probability", "feature_map", "cam_weights", "p_viral", "ood_score"})
    )


# ------------------------------------------------------------------ runtime


def test_a_photo_is_refused_with_a_reason_and_nothing_else(model: PneumoniaModel, negatives: Path) -> None:
    photo = negative_files(negatives, "photo")[0]
    pred = model.predict([load_image(photo)])[0]
    assert pred.status == "refused" and pred.refused
    assert pred.probability is None and pred.label is None and pred.p_viral is None and pred.subtype is None
    assert pred.ood_score == pytest.approx(OOD_FAR) and pred.ood_limit == LIMIT
    assert pred.refusal_reason == REASON and not pred.overridden
    explanation = model.explain(load_image(photo))
    assert explanation.cam is None  # no Grad-CAM for what the model cannot read


def test_refuse_false_scores_it_and_marks_it_overridden(model: PneumoniaModel, negatives: Path) -> None:
    photo = negative_files(negatives, "photo")[0]
    pred = model.predict([load_image(photo)], refuse=False)[0]
    assert pred.status == "scored" and pred.overridden and pred.refusal_reason == REASON
    assert pred.probability == pytest.approx(expected_probability(photo), abs=1e-6)
    explanation = model.explain(load_image(photo), refuse=False)
    assert explanation.prediction.overridden and explanation.cam is not None
    assert explanation.cam.shape == load_image(photo).grey.shape


def test_xrays_are_scored_with_a_subtype_only_for_pneumonia(model: PneumoniaModel, xrays: list[Path]) -> None:
    preds = model.predict([load_image(p) for p in xrays])
    labels = set()
    for path, pred in zip(xrays, preds):
        assert pred.status == "scored" and not pred.overridden and pred.refusal_reason is None
        assert pred.ood_score == pytest.approx(OOD_NEAR) and pred.ood_limit == LIMIT
        assert pred.probability == pytest.approx(expected_probability(path), abs=1e-6)
        labels.add(pred.label)
        if pred.label == "PNEUMONIA":
            assert pred.p_viral is not None and pred.p_viral == pytest.approx(expected_p_viral(path), abs=1e-6)
            assert pred.subtype == ("viral" if pred.p_viral >= 0.5 else "bacterial")
        else:
            assert pred.p_viral is None and pred.subtype is None
    assert labels == {"NORMAL", "PNEUMONIA"}
    assert {p.subtype for p in preds} >= {"viral", "bacterial", None}


def test_refuse_false_changes_nothing_for_an_xray(model: PneumoniaModel, xrays: list[Path]) -> None:
    images = [load_image(p) for p in xrays[:4]]
    assert model.predict(images) == model.predict(images, refuse=False)


def test_an_older_model_scores_everything_with_no_subtype(tmp_path: Path, negatives: Path) -> None:
    old = fake_model(tmp_path, FakeV2Engine(with_v2_outputs=False), v2=False)
    photo = negative_files(negatives, "photo")[0]
    pred = old.predict([load_image(photo)])[0]
    assert pred.status == "scored" and pred.probability is not None and pred.label is not None
    assert (pred.ood_score, pred.ood_limit, pred.refusal_reason, pred.p_viral, pred.subtype) == (None,) * 5
    assert not pred.overridden


def test_a_non_finite_ood_score_is_refused(tmp_path: Path, xrays: list[Path]) -> None:
    engine = FakeV2Engine()
    base = engine.__call__

    def nan_engine(x):
        out = base(x)
        out["ood_score"] = np.full_like(out["ood_score"], np.nan)
        return out

    pred = fake_model(tmp_path, nan_engine).predict([load_image(xrays[0])])[0]
    assert pred.refused and "out-of-distribution score nan" in (pred.refusal_reason or "")


def test_a_card_refusal_without_the_output_is_a_clear_runtime_error(tmp_path: Path, xrays: list[Path]) -> None:
    broken = fake_model(tmp_path, FakeV2Engine(with_v2_outputs=False), v2=True)
    with pytest.raises(RuntimeError, match=r"p_viral|ood_score"):
        broken.predict([load_image(xrays[0])])


# ------------------------------------------------------------------ batch CSV


def mixed_inputs(tmp_path: Path, negatives: Path, xrays: list[Path]) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "mixed"
    folder.mkdir()
    expected: dict[str, str] = {}
    for path in xrays:
        shutil.copy(path, folder / path.name)
        expected[path.name] = "scored"
    for path in negative_files(negatives):
        name = f"{path.parent.name}_{path.name}"
        shutil.copy(path, folder / name)
        expected[name] = "refused"
    (folder / "notes.png").write_text("not an image")
    expected["notes.png"] = "error"
    return folder, expected


def test_csv_has_status_ood_and_subtype_on_every_row(
    model: PneumoniaModel, negatives: Path, xrays, tmp_path: Path
) -> None:
    folder, expected = mixed_inputs(tmp_path, negatives, xrays)
    heat = tmp_path / "heat"
    out = tmp_path / "out.csv"
    summary = score_paths([folder], out, model=model, heatmaps_dir=heat)
    rows = {Path(r["path"]).name: r for r in read_csv_rows(out)}
    assert {name: r["status"] for name, r in rows.items()} == expected
    for name, r in rows.items():
        if r["status"] == "refused":
            assert r["probability"] == "" and r["prediction"] == "" and r["error"] == ""
            assert float(r["ood_score"]) == pytest.approx(OOD_FAR) and float(r["ood_limit"]) == LIMIT
            assert r["refusal_reason"] == REASON and r["overridden"] == "false"
            assert r["p_viral"] == "" and r["subtype"] == ""
        elif r["status"] == "scored":
            assert float(r["probability"]) == pytest.approx(expected_probability(folder / name), abs=1e-6)
            assert float(r["ood_score"]) == pytest.approx(OOD_NEAR) and r["refusal_reason"] == ""
            if r["prediction"] == "PNEUMONIA":
                assert float(r["p_viral"]) == pytest.approx(expected_p_viral(folder / name), abs=1e-6)
                assert r["subtype"] == ("viral" if float(r["p_viral"]) >= 0.5 else "bacterial")
            else:
                assert r["prediction"] == "NORMAL" and r["p_viral"] == "" and r["subtype"] == ""
        else:
            assert "not an image" in r["error"] and r["probability"] == "" and r["subtype"] == ""
            assert r["ood_score"] == "" and r["p_viral"] == ""
    n_refused = sum(v == "refused" for v in expected.values())
    assert (summary.scored, summary.refused, summary.errors) == (len(xrays), n_refused, 1)
    # heat maps for scored images only
    assert len(list(heat.glob("*.png"))) == len(xrays)
    # the reader maps every new column back
    back = {r.path.name: r for r in read_results(out)}
    photo = next(n for n, s in expected.items() if s == "refused")
    assert back[photo].status == "refused" and back[photo].refusal_reason == REASON and back[photo].probability is None
    assert {r.subtype for r in back.values()} >= {"viral", "bacterial", ""}


def test_csv_without_refusal_marks_negatives_overridden(
    model: PneumoniaModel, negatives: Path, xrays, tmp_path: Path
) -> None:
    folder, expected = mixed_inputs(tmp_path, negatives, xrays)
    out = tmp_path / "out.csv"
    summary = score_paths([folder], out, model=model, refuse=False)
    rows = {Path(r["path"]).name: r for r in read_csv_rows(out)}
    for name, status in expected.items():
        r = rows[name]
        if status == "refused":
            assert r["status"] == "scored" and r["overridden"] == "true" and r["refusal_reason"] == REASON
            assert float(r["probability"]) == pytest.approx(expected_probability(folder / name), abs=1e-6)
        elif status == "scored":
            assert r["overridden"] == "false"
    assert summary.refused == 0 and summary.errors == 1


# ------------------------------------------------------------------ CLI


@pytest.fixture()
def cli_model(monkeypatch, model: PneumoniaModel):
    monkeypatch.setattr(runtime.PneumoniaModel, "load", classmethod(lambda cls, d=None, n=None, batch_size=8: model))
    return model


def test_cli_score_refuses_and_no_refuse_overrides(cli_model, negatives: Path, xrays, tmp_path: Path, capsys) -> None:
    folder, expected = mixed_inputs(tmp_path, negatives, xrays)
    out = tmp_path / "cli.csv"
    assert cli.main(["score", str(folder), "-o", str(out), "-q"]) == 0
    n_refused = sum(v == "refused" for v in expected.values())
    err = capsys.readouterr().err
    assert f"{len(xrays)} scored, 1 errors, {n_refused} refused as not a chest X-ray" in err
    assert {Path(r["path"]).name: r["status"] for r in read_csv_rows(out)} == expected
    assert cli.main(["score", str(folder), "-o", str(out), "-q", "--overwrite", "--no-refuse"]) == 0
    rows = read_csv_rows(out)
    assert {r["status"] for r in rows} == {"scored", "error"}
    assert sum(r["overridden"] == "true" for r in rows) == n_refused


def test_cli_predict_json_and_text_for_a_refused_photo(cli_model, negatives: Path, tmp_path: Path, capsys) -> None:
    photo = negative_files(negatives, "photo")[0]
    heat = tmp_path / "heat.png"
    assert cli.main(["predict", str(photo), "--json", "--heatmap", str(heat)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "refused" and data["probability"] is None and data["prediction"] is None
    assert data["ood_score"] == pytest.approx(OOD_FAR) and data["ood_limit"] == LIMIT
    assert data["refusal_reason"] == REASON and data["overridden"] is False
    assert data["p_viral"] is None and data["subtype"] is None and data["heatmap"] is None
    assert not heat.exists()  # no Grad-CAM for a refused image
    assert cli.main(["predict", str(photo)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"REFUSED  {REASON}") and "--no-refuse" in text and "probability of pneumonia" not in text

    assert cli.main(["predict", str(photo), "--json", "--no-refuse", "--heatmap", str(heat)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "scored" and data["overridden"] is True and data["refusal_reason"] == REASON
    assert data["probability"] == pytest.approx(expected_probability(photo), abs=1e-6)
    assert heat.is_file() and data["heatmap"] == str(heat)
    assert cli.main(["predict", str(photo), "--no-refuse"]) == 0
    assert "overridden: scored although it would be refused" in capsys.readouterr().out


def test_cli_predict_json_carries_the_subtype(cli_model, xrays, capsys) -> None:
    by_label: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in xrays:
        assert cli.main(["predict", str(path), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["status"] == "scored" and data["ood_score"] == pytest.approx(OOD_NEAR) and not data["overridden"]
        by_label.setdefault(data["prediction"], []).append((path, data))
    for path, data in by_label["PNEUMONIA"]:
        assert data["p_viral"] == pytest.approx(expected_p_viral(path), abs=1e-6)
        assert data["subtype"] in ("bacterial", "viral")
    for _path, data in by_label["NORMAL"]:
        assert data["p_viral"] is None and data["subtype"] is None
    path, _ = by_label["PNEUMONIA"][0]
    assert cli.main(["predict", str(path)]) == 0
    assert "subtype (research use only):" in capsys.readouterr().out


# ------------------------------------------------------------------ the negatives script and the bench


def test_negatives_script_labels_kinds_and_is_reproducible(negatives: Path, tmp_path: Path) -> None:
    module = make_negatives_module()
    labels = module.read_labels(negatives)
    kinds = {item.kind for item in labels}
    assert kinds == {"photo", "synthetic", "document", "xray_rotated90", "xray_inverted"}
    assert all(item.group == ("near" if item.kind.startswith("xray_") else "far") for item in labels)
    assert all((negatives / item.path).is_file() for item in labels)
    assert any(item.source == "skimage.data.astronaut" for item in labels)
    # near kinds are made from the given X-rays
    for item in labels:
        if item.kind == "xray_inverted":
            source = load_image(SAMPLES_DIR / item.source).grey
            inverted = np.asarray(Image.open(negatives / item.path).convert("L"), dtype=np.float32)
            assert inverted.shape[0] / inverted.shape[1] == pytest.approx(source.shape[0] / source.shape[1], abs=0.02)
            assert abs(float(inverted.mean()) - (255 - float(source.mean()))) < 3
        if item.kind == "xray_rotated90":
            source = load_image(SAMPLES_DIR / item.source).grey
            with Image.open(negatives / item.path) as im:
                assert im.size[1] / im.size[0] == pytest.approx(source.shape[1] / source.shape[0], abs=0.02)
    again = tmp_path / "again"
    module.generate(again, [SAMPLES_DIR], seed=3, per_kind=2, max_side=128, kinds=["synthetic", "xray_inverted"])
    for item in module.read_labels(again):
        assert (again / item.path).read_bytes() == (negatives / item.path).read_bytes()
    assert module.main([str(tmp_path / "bad"), "--kinds", "xray_corner", "--xray", str(tmp_path / "none")]) == 2


def test_measure_refusal_reports_shares_per_kind_and_folder(model: PneumoniaModel, negatives: Path, xrays) -> None:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("measure_refusal", REPO / "bench" / "measure_refusal.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["measure_refusal"] = bench
    spec.loader.exec_module(bench)
    (xrays[0].parent / "broken.png").write_text("not an image")
    rates = {r.name: r for r in bench.measure_all(model, negatives, [xrays[0].parent])}
    assert rates["photo"].share == 1.0 and rates["photo"].group == "far"
    assert rates["xray_inverted"].group == "near" and rates["xray_inverted"].refused == rates["xray_inverted"].n
    folder = rates[str(xrays[0].parent)]
    assert (folder.n, folder.refused, folder.unreadable, folder.share) == (len(xrays), 0, 1, 0.0)
    text = bench.report(list(rates.values()), LIMIT)
    assert "all far kinds:" in text and "3 of 3 kinds at >= 95%" in text


# ------------------------------------------------------------------ the real LiteRT path


def test_real_model_without_the_sections_scores_everything(tiny_model_dir: Path, sample_paths, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "old_model"))
    card = json.loads((folder / "model_card.json").read_text())
    card.pop("refusal", None)
    card.pop("subtype", None)
    (folder / "model_card.json").write_text(json.dumps(card))
    write_manifest(folder)  # a deliberate edit: the manifest follows it
    model = PneumoniaModel.load(folder)
    assert model.card.refusal is None and model.card.subtype is None
    for pred in model.predict([load_image(p) for p in sample_paths[:4]]):
        assert pred.status == "scored" and pred.probability is not None
        assert (pred.ood_score, pred.ood_limit, pred.p_viral, pred.subtype, pred.overridden) == (
            None,
            None,
            None,
            None,
            False,
        )


def test_real_model_with_a_refusal_section_needs_the_output(tiny_model_dir: Path, sample_paths, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    outputs = Interpreter(model_path=str(tiny_model_dir / "model.tflite")).get_signature_list()["serving_default"][
        "outputs"
    ]
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "v2_card"))
    card = json.loads((folder / "model_card.json").read_text())
    card["refusal"] = {"limit": 1e-12, "method": "test: refuse everything", "rule": "test"}
    (folder / "model_card.json").write_text(json.dumps(card))
    write_manifest(folder)  # a deliberate edit: the manifest follows it
    if "ood_score" not in outputs:  # a graph exported before model v2
        with pytest.raises(ModelIntegrityError, match="no 'ood_score' output"):
            PneumoniaModel.load(folder)
    else:
        preds = PneumoniaModel.load(folder).predict([load_image(p) for p in sample_paths[:3]])
        assert all(p.refused and p.probability is None and p.ood_score is not None for p in preds)
