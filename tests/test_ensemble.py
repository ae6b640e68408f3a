"""Ensembles merged into one network: exactly the members' mean logit, the export contract, the recipe path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.preprocess import prepare_input
from tests.test_trainer_data import make_dataset_folder


def _member(seed: int, subtype: bool = True):
    import keras

    from trainer.backbones import build_backbone
    from trainer.model import build_classifier

    keras.utils.set_random_seed(seed)
    backbone, _ = build_backbone("tiny", 64, None)
    return build_classifier(backbone, subtype_head=subtype)


def _logits(model, images: np.ndarray) -> dict[str, np.ndarray]:
    import keras

    names = ["logit"] + (["viral_logit"] if any(layer.name == "viral_logit" for layer in model.layers) else [])
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    out = probe.predict(images, verbose=0)
    return dict(zip(names, [np.asarray(o) for o in (out if isinstance(out, list) else [out])]))


@pytest.fixture(scope="module")
def sample_inputs(sample_paths) -> np.ndarray:
    return np.stack([prepare_input(load_image(p).grey, 64) for p in sample_paths]).astype(np.float32)


def test_merged_network_returns_the_mean_of_the_members_logits(sample_inputs):
    from trainer.ensemble_merge import merge_members

    members = [_member(1), _member(2), _member(3)]
    merged = merge_members(members)
    per_member = [_logits(m, sample_inputs) for m in members]
    together = _logits(merged, sample_inputs)
    for name in ("logit", "viral_logit"):
        mean = np.mean([m[name] for m in per_member], axis=0)
        assert np.abs(per_member[0][name] - per_member[1][name]).max() > 1e-3  # the members really differ
        np.testing.assert_allclose(together[name], mean, atol=1e-5)
    # one flat backbone: every member's layers addressable by their prefixed names
    backbone = merged.get_layer("backbone")
    assert {"m0_top_activation", "m2_relu0", "member_concat"} <= {layer.name for layer in backbone.layers}
    assert backbone.output_shape[-1] == 3 * members[0].get_layer("backbone").output_shape[-1]


def test_members_that_do_not_fit_together_are_refused():
    import keras

    from trainer.backbones import build_backbone
    from trainer.ensemble_merge import merge_members
    from trainer.model import build_classifier

    with pytest.raises(ValueError, match="at least two"):
        merge_members([_member(1)])
    with pytest.raises(ValueError, match="subtype head"):
        merge_members([_member(1), _member(2, subtype=False)])
    keras.utils.set_random_seed(4)
    other_size = build_classifier(build_backbone("tiny", 96, None)[0], subtype_head=True)
    with pytest.raises(ValueError, match="member 1"):
        merge_members([_member(1), other_size])


def test_exported_ensemble_keeps_the_contract_and_its_map_is_the_members_mean(tmp_path, sample_inputs):
    """TFLite = Keras; the in-graph Grad-CAM weights are the merged logit's gradient; the map the app draws
    (weights . feature map) is the mean of the members' own maps; the OOD score reads every member."""
    import keras

    from trainer.card_builder import build_card
    from trainer.ensemble_merge import CONCAT_LAYER, member_layer_names, merge_members
    from trainer.export import cam_reference, export_model_folder, tflite_outputs
    from trainer.ood import fit_ood, pooled_feature_model, pooled_features

    members = [_member(5), _member(6)]
    merged = merge_members(members)
    layers = member_layer_names([("relu1", "top_activation")] * 2)
    stats = fit_ood(layers, pooled_features(pooled_feature_model(merged, layers), sample_inputs))
    card = build_card(name="ensemble-test", version="0.0.1", backbone="2 x tiny", input_size=64, threshold=0.5,
                      threshold_rule="fixed", gradcam_layer=f"backbone/{CONCAT_LAYER}",
                      extra={"refusal": {"limit": 100.0, "method": "test", "rule": "test"}})
    out_dir = tmp_path / "model"
    export_model_folder(merged, out_dir, card, sample_inputs[:4], temperature=1.3, ood=stats)
    tfl = tflite_outputs(out_dir / mc.TFLITE_FILENAME, sample_inputs)

    mean_logit = np.mean([_logits(m, sample_inputs)["logit"] for m in members], axis=0)
    np.testing.assert_allclose(tfl[mc.OUTPUT_PROBABILITY], 1 / (1 + np.exp(-mean_logit / 1.3)), atol=1e-4)

    reloaded = keras.models.load_model(out_dir / mc.KERAS_FILENAME, compile=False)
    grads, _ = cam_reference(reloaded, sample_inputs, None)
    np.testing.assert_allclose(tfl[mc.OUTPUT_CAM_WEIGHTS], grads, rtol=1e-3, atol=1e-6)

    def raw_map(weights, feature_map):
        return np.einsum("nhwc,nc->nhw", feature_map, weights)

    member_maps = [raw_map(*cam_reference(member, sample_inputs, None)) for member in members]
    np.testing.assert_allclose(raw_map(tfl[mc.OUTPUT_CAM_WEIGHTS], tfl[mc.OUTPUT_FEATURE_MAP]),
                               np.mean(member_maps, axis=0), rtol=1e-3, atol=1e-5)
    assert tfl[mc.OUTPUT_OOD_SCORE].shape == (len(sample_inputs), 1)
    assert [d.layer for d in stats.depths] == ["m0_relu1", "m0_top_activation", "m1_relu1", "m1_top_activation"]


def _member_recipe(path, root, dev, seed: int, **extra: str) -> str:
    settings = {"data_root": f'"{root}"', "run_dir": f'"{path.parent / path.stem}"', "backbone": '"tiny"',
                "weights": '"none"', "input_size": "64", "batch_size": "8", "epochs_stage1": "1",
                "epochs_stage2": "1", "val_fraction": "0.3", "subtype_head": "true", "dev_root": f'"{dev}"',
                "seed": str(seed)} | extra
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return str(path)


@pytest.mark.slow
def test_ensemble_recipe_trains_its_members_then_exports_one_model_the_app_runs(tmp_path, sample_paths):
    from pneumo_desktop.core.runtime import PneumoniaModel
    from trainer.cli import main

    root = make_dataset_folder(tmp_path / "data", sample_paths, copies=3)
    dev = make_dataset_folder(tmp_path / "dev", sample_paths[::-1], copies=1, size=140) / "train"
    members = [_member_recipe(tmp_path / f"member{k}.toml", root, dev, seed) for k, seed in enumerate((1, 2))]
    recipe = tmp_path / "ensemble.toml"
    recipe.write_text(f'data_root = "{root}"\nbackbone = "tiny"\ninput_size = 64\nval_fraction = 0.3\n'
                      f'subtype_head = true\ndev_root = "{dev}"\nmembers = {json.dumps(members)}\n')
    run_dir, export_dir = tmp_path / "ensemble", tmp_path / "ensemble" / "export"
    argv = ["train", "--recipe", str(recipe), "--run-dir", str(run_dir), "--export", str(export_dir)]
    assert main(argv) == 0

    for k in range(2):  # each member trained in its own run folder, and exported nothing of its own
        state = json.loads((tmp_path / f"member{k}" / "state.json").read_text())
        assert state["stage1"] and state["stage2"]
        assert not (tmp_path / f"member{k}" / "export").exists()
    raw = json.loads((export_dir / mc.CARD_FILENAME).read_text())
    assert [m["recipe"] for m in raw["ensemble"]["members"]] == members
    assert [m["seed"] for m in raw["ensemble"]["members"]] == [1, 2]
    assert raw["backbone"].startswith("tiny + tiny") and raw["gradcam"]["layer"] == "backbone/member_concat"
    assert raw["refusal"]["statistics"]["layers"][0].startswith("m0_")
    assert raw["refusal"]["statistics"]["layers"][-1].startswith("m1_")
    assert set(raw["training"]["stage_seconds"]) == {"member 0 stage 1", "member 0 stage 2",
                                                     "member 1 stage 1", "member 1 stage 2"}
    from trainer.card_builder import render_markdown

    text = render_markdown(raw)
    assert "## Ensemble" in text and members[1] in text

    model = PneumoniaModel.load(export_dir)
    explanation = model.explain(load_image(sample_paths[0]), refuse=False)
    assert 0 <= explanation.prediction.probability <= 1 and explanation.cam is not None

    # every subset scored from the runs' own logits: a member alone reproduces its run's validation figure
    table = tmp_path / "subsets.json"
    assert main(["ensembles", str(tmp_path / "member0"), str(tmp_path / "member1"), "--json", str(table)]) == 0
    rows = {" + ".join(r["members"]): r for r in json.loads(table.read_text())}
    assert set(rows) == {"member0", "member1", "member0 + member1"}
    for k in range(2):
        own = json.loads((tmp_path / f"member{k}" / "report" / "metrics.json").read_text())
        assert rows[f"member{k}"]["val_roc_auc"] == pytest.approx(own["validation"]["roc_auc"], abs=1e-6)
    assert rows["member0 + member1"]["val_roc_auc"] == pytest.approx(raw["metrics"]["validation"]["roc_auc"], abs=1e-6)

    # resuming retrains nothing: the members' logs are unchanged
    logs = [(tmp_path / f"member{k}" / "log_stage1.csv").read_text() for k in range(2)]
    assert main(argv) == 0
    assert [(tmp_path / f"member{k}" / "log_stage1.csv").read_text() for k in range(2)] == logs


def test_a_member_on_another_split_is_refused_before_any_training(tmp_path, sample_paths):
    from trainer.cli import main

    root = make_dataset_folder(tmp_path / "data", sample_paths, copies=1)
    members = [_member_recipe(tmp_path / "a.toml", root, root / "train", 1),
               _member_recipe(tmp_path / "b.toml", root, root / "train", 2, split_seed="7")]
    recipe = tmp_path / "ensemble.toml"
    recipe.write_text(f'data_root = "{root}"\nbackbone = "tiny"\ninput_size = 64\nval_fraction = 0.3\n'
                      f'subtype_head = true\nmembers = {json.dumps(members)}\nrun_dir = "{tmp_path / "ens"}"\n')
    assert main(["train", "--recipe", str(recipe)]) != 0
    assert not (tmp_path / "a").exists()  # checked before the first member trains
