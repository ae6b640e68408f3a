"""Reliability round 3 (issue 26): long names, broken profiles, decoder noise, orientation, card checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_desktop import cli
from pneumo_desktop.core import site_profiles
from tests.imaging_helpers import sample_grey
from tests.test_batch import read_csv


def write_png(path: Path, grey: np.ndarray) -> Path:
    Image.fromarray(grey).save(path)
    return path


# ------------------------------------------------------------------ 2. damaged site profiles

_GOOD_PROFILE = {
    "name": "Ward A", "model_sha256": "0" * 64, "model_name": "m", "model_version": "1", "threshold": 0.4,
    "rule": {"kind": "min_sensitivity", "target": 0.95}, "image_count": {"scored": 10}, "figures": {},
    "created": "2026-01-01T00:00:00+00:00",
}

_DAMAGED = {
    "huge_number": '{"name": "Ward A", "threshold": 1e400}',
    "huge_count": json.dumps(_GOOD_PROFILE).replace('"scored": 10', '"scored": 1e400'),
    "deep": "[" * 100_000 + "]" * 100_000,
    "deep_field": json.dumps({**_GOOD_PROFILE, "rule": {}}).replace('"rule": {}', '"rule": ' + "[" * 50_000 + "]" * 50_000),
    "wrong_types": json.dumps({**_GOOD_PROFILE, "threshold": "0.4", "rule": [1, 2]}),
    "bool_threshold": json.dumps({**_GOOD_PROFILE, "threshold": True}),
    "list": "[1, 2, 3]",
    "nan": json.dumps(_GOOD_PROFILE).replace("0.4", "NaN"),
    "not_utf8": b'{"name": "Ward \xff\xfe"}',
}


@pytest.mark.parametrize("kind", sorted(_DAMAGED))
def test_any_damaged_profile_is_a_profile_error(kind: str) -> None:
    folder = site_profiles.profiles_dir()
    folder.mkdir(parents=True, exist_ok=True)
    content = _DAMAGED[kind]
    (folder / "ward_a.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(site_profiles.ProfileError):
        site_profiles.load_profile("Ward A")
    assert site_profiles.list_profiles() == []  # skipped with a warning, never an exception


def test_damaged_active_profile_is_skipped_and_profiles_list_works(tiny_model_dir: Path, tmp_path: Path,
                                                                   capsys) -> None:
    folder = site_profiles.profiles_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ward_a.json").write_text(_DAMAGED["huge_number"])
    (site_profiles.config_dir() / site_profiles.ACTIVE_FILE).write_text('{"active": "Ward A"}')
    assert cli.main(["profiles", "list"]) == 0
    capsys.readouterr()
    image = write_png(tmp_path / "x.png", sample_grey(0, max_side=96))
    out = tmp_path / "r.csv"
    status = cli.main(["score", str(image), "-o", str(out), "--model", str(tiny_model_dir), "-q"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "active site profile not used" in err and "unexpected error" not in err
    assert read_csv(out)[1][0]["threshold_source"] == "card"
    assert cli.main(["predict", str(image), "--model", str(tiny_model_dir)]) == 0
    (site_profiles.config_dir() / site_profiles.ACTIVE_FILE).write_text("[" * 100_000)
    assert site_profiles.active_profile_name() is None
