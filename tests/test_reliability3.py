"""Reliability round 3 (issue 26): long names, broken profiles, decoder noise, orientation, card checks."""

from __future__ import annotations

import json
import os
import subprocess
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

_DAMAGED: dict[str, str | bytes] = {
    "huge_number": '{"name": "Ward A", "threshold": 1e400}',
    "huge_count": json.dumps(_GOOD_PROFILE).replace('"scored": 10', '"scored": 1e400'),
    "deep": "[" * 100_000 + "]" * 100_000,
    "deep_field": json.dumps({**_GOOD_PROFILE, "rule": {}}).replace(
        '"rule": {}', '"rule": ' + "[" * 50_000 + "]" * 50_000),
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
    (folder / "ward_a.json").write_text(str(_DAMAGED["huge_number"]))
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


# ------------------------------------------------------------------ 3. decoder libraries kept off the terminal


def jpeg_dicom(path: Path, jpeg: bytes, rows: int, cols: int) -> Path:
    """A DICOM holding one baseline JPEG frame, with the header's Rows/Columns as given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is edited to declare width x height."""
    import io

    buf = io.BytesIO()
    Image.fromarray(sample_grey(0, max_side=64)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def test_dicom_frame_bomb_gives_one_row_and_no_traceback(tiny_model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    grey = sample_grey(0, max_side=64)
    bomb = jpeg_dicom(tmp_path / "bomb.dcm", jpeg_declaring(60000, 60000), *grey.shape)
    out = tmp_path / "r.csv"
    done = subprocess.run(
        [sys.executable, "-m", "pneumo_desktop", "score", str(bomb), "-o", str(out), "--model", str(tiny_model_dir),
         "-q"], capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "pydicom" not in done.stderr, done.stderr[-3000:]
    row = read_csv(out)[1][0]
    assert "declares 60000x60000 pixels" in row["error"] and "header says" in row["error"]


def test_decoder_log_records_go_to_debug_not_the_terminal(caplog) -> None:
    import logging

    from pneumo_desktop.core.decoder_noise import quiet_decoders

    terminal: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            terminal.append(record)

    root_handler = Collect(level=logging.WARNING)
    logging.getLogger().addHandler(root_handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="pneumo_desktop.decoders"), quiet_decoders():
            for name in ("pydicom", "PIL.TiffImagePlugin", "gdcm"):
                try:
                    raise RuntimeError("inside the plugin")
                except RuntimeError:
                    logging.getLogger(name).exception("plugin %s failed", name)
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert [r for r in terminal if not r.name.startswith("pneumo_desktop")] == []
    assert [r for r in terminal if r.levelno >= logging.WARNING] == []
    ours = [r for r in caplog.records if r.name == "pneumo_desktop.decoders"]
    assert len(ours) == 3 and all(r.levelno == logging.DEBUG for r in ours)
    assert "plugin pydicom failed" in ours[0].getMessage()


# ------------------------------------------------------------------ 4. orientation applied exactly once


def _oriented_reference() -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A stored image and, for each Orientation value, what a viewer shows (Pillow's exif_transpose)."""
    from PIL import ImageOps

    stored = np.zeros((72, 96), np.uint8)
    stored[:, :] = np.linspace(40, 200, 96, dtype=np.uint8)[None, :]
    stored[:24, :32] = 255  # a bright block in the top-left corner: any flip or turn moves it
    stored[60:, 80:] = 0
    shown = {}
    for orientation in range(1, 9):
        im = Image.fromarray(stored)
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.info["exif"] = exif.tobytes()
        im.getexif()[0x0112] = orientation
        shown[orientation] = np.asarray(ImageOps.exif_transpose(im))
    return stored, shown


def _encode(stored: np.ndarray, fmt: str, orientation: int) -> bytes:
    import io

    from PIL import TiffImagePlugin

    buf = io.BytesIO()
    im = Image.fromarray(stored)
    if fmt == "TIFF":
        info = TiffImagePlugin.ImageFileDirectory_v2()
        info[0x0112] = orientation
        im.save(buf, "TIFF", tiffinfo=info)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(buf, fmt, exif=exif.tobytes(), **({"quality": 98} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_exactly_once(fmt: str, orientation: int) -> None:
    from pneumo_desktop.core.imaging import decode_image

    stored, shown = _oriented_reference()
    image = decode_image(_encode(stored, fmt, orientation), f"x.{fmt.lower()}")
    expected = shown[orientation]
    assert image.grey.shape == expected.shape
    tolerance = 4.0 if fmt == "JPEG" else 0.0
    assert np.abs(image.grey.astype(int) - expected.astype(int)).mean() <= tolerance
    if orientation != 1:  # the reference really differs from the stored pixels: the test can fail
        assert image.grey.shape != stored.shape or not np.array_equal(expected, stored)


# ------------------------------------------------------------------ 1. long names and heat maps


def test_heatmap_names_fit_the_name_limit() -> None:
    from pneumo_desktop.core.batch import heatmap_name

    sha = "ab" * 32
    for stem in ("a" * 250, "é" * 127 + "a", "\u6f22" * 84, "x"):
        name = heatmap_name(Path(stem + ".png"), sha)
        assert len(os.fsencode(name)) <= 255 and name.endswith("_abababab.png")
        name.encode("utf-8")  # no half character: strict UTF-8 still encodes it
    assert heatmap_name(Path("short.png"), sha) == "short_abababab.png"


def test_long_names_with_heatmaps_complete_and_resume(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["a" * 250 + ".png", "\u00e9" * 124 + ".png", "ok.png"]
    for i, name in enumerate(names):
        write_png(folder / name, sample_grey(i, max_side=96))
    out, heat = tmp_path / "r.csv", tmp_path / "heat"
    args = ["score", str(folder), "-o", str(out), "--heatmaps", str(heat), "--model", str(tiny_model_dir), "-q",
            "--no-refuse"]
    status = cli.main(args)
    err = capsys.readouterr().err
    assert status == 0, err
    rows = read_csv(out)[1]
    assert sorted(Path(r["path"]).name for r in rows) == sorted(names)
    scored = [r for r in rows if r["status"] == "scored"]
    assert all(not r["error"] for r in rows), [r["error"] for r in rows]
    assert len(scored) == 3 and len(list(heat.glob("*.png"))) == 3
    assert all(len(os.fsencode(p.name)) <= 255 for p in heat.iterdir())
    assert cli.main([*args, "--resume"]) == 0
    assert len(read_csv(out)[1]) == 3


def test_a_failed_heatmap_is_that_files_row(fake_model, tmp_path: Path, monkeypatch) -> None:
    import errno

    from pneumo_desktop.core import batch

    images = [write_png(tmp_path / f"{i}.png", sample_grey(i, max_side=96)) for i in range(3)]
    real = batch.write_png_atomic

    def fail_second(target, rgb, *args, **kwargs):
        if "1_" in Path(target).name:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(target, rgb, *args, **kwargs)

    monkeypatch.setattr(batch, "write_png_atomic", fail_second)
    summary = batch.score_paths(images, tmp_path / "r.csv", model=fake_model(tmp_path), heatmaps_dir=tmp_path / "h",
                                refuse=False)
    rows = read_csv(tmp_path / "r.csv")[1]
    assert summary.total == 3 and len(rows) == 3
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 1 and failed[0]["path"].endswith("1.png") and failed[0]["probability"]
    assert "heat map could not be written: Invalid argument" in failed[0]["error"]


# ------------------------------------------------------------------ 6. a row for every file, with a reason


def test_files_beyond_path_max_get_a_path_too_long_row(fake_model, tmp_path: Path) -> None:
    from pneumo_desktop.core.batch import score_paths

    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    depth = 0
    try:  # build it through descriptors: the path itself is too long for mkdir
        while len(str(top)) + depth * 201 < 4300:
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, depth = child, depth + 1
        with open(os.open("x.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as handle:
            Image.fromarray(sample_grey(0, max_side=64)).save(handle, "PNG")
    finally:
        os.close(fd)
    out = tmp_path / "r.csv"
    score_paths([top], out, model=fake_model(tmp_path), recursive=True)
    rows = read_csv(out)[1]
    assert len(rows) == 1 and rows[0]["path"].endswith("x.png")
    assert rows[0]["error"].startswith("path too long"), rows[0]["error"]
    subprocess.run(["rm", "-rf", str(top)], check=False)  # rm copes with paths beyond PATH_MAX


def test_text_chunk_bomb_and_decoder_errors_say_what_is_wrong() -> None:
    import io
    import struct
    import zlib

    from pneumo_desktop.core.imaging import ImageLoadError, decode_image

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    buf = io.BytesIO()
    Image.fromarray(sample_grey(0, max_side=64)).save(buf, "PNG")
    png = buf.getvalue()
    bomb = chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"\x00" * (200 << 20), 9))
    data = png[:33] + bomb + png[33:]
    with pytest.raises(ImageLoadError) as caught:
        decode_image(data, "bomb.png")
    assert "decompression bomb" in caught.value.reason and "text" in caught.value.reason
    # a deflate TIFF whose compressed data is damaged: libtiff's "decoder error -2" made a sentence
    buf = io.BytesIO()
    Image.fromarray((np.arange(200 * 200) % 251).astype(np.uint8).reshape(200, 200)).save(
        buf, "TIFF", compression="tiff_adobe_deflate")
    tiff = bytearray(buf.getvalue())
    for k in range(40, 90):
        tiff[k] ^= 0x5A
    with pytest.raises(ImageLoadError) as caught:
        decode_image(bytes(tiff), "bad.tif")
    assert "decoder error" not in caught.value.reason
    assert "compressed image data cannot be decoded" in caught.value.reason and "re-save" in caught.value.reason


# ------------------------------------------------------------------ 5. every card field checked; the manifest


def _model_variant(tiny_model_dir: Path, tmp_path: Path, change, manifest: bool = True) -> Path:
    import shutil

    from pneumo_desktop.core import model_card as mc

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    card = json.loads((folder / mc.CARD_FILENAME).read_text())
    change(card)
    (folder / mc.CARD_FILENAME).write_text(json.dumps(card))
    if manifest:  # the values alone are wrong, not the checksum
        (folder / mc.MANIFEST_FILENAME).write_text(json.dumps({"schema_version": 1, "algorithm": "sha256", "files": {
            name: mc.sha256_of_file(folder / name) for name in (mc.CARD_FILENAME, mc.TFLITE_FILENAME, mc.KERAS_FILENAME)
        }}))
    return folder


BAD_CARD_VALUES = {
    "subtype-threshold-7": (lambda c: c["subtype"]["threshold"].__setitem__("value", 7), "subtype threshold"),
    "subtype-threshold-nan": (lambda c: c["subtype"]["threshold"].__setitem__("value", "nan"), "subtype threshold"),
    "subtype-same-classes": (lambda c: c["subtype"].__setitem__("classes", ["viral", "viral"]), "subtype classes"),
    "refusal-limit-negative": (lambda c: c["refusal"].__setitem__("limit", -1), "refusal limit"),
    "refusal-limit-zero": (lambda c: c["refusal"].__setitem__("limit", 0), "refusal limit"),
    "refusal-limit-inf": (lambda c: c["refusal"].__setitem__("limit", "inf"), "refusal limit"),
    "threshold-7": (lambda c: c["threshold"].__setitem__("value", 7), "threshold"),
    "temperature-0": (lambda c: c.setdefault("calibration", {}).__setitem__("temperature", 0), "temperature"),
    "input-size-huge": (lambda c: c.__setitem__("input_size", 100_000), "input_size"),
    "gradcam-layer-empty": (lambda c: c["gradcam"].__setitem__("layer", " "), "gradcam"),
    "artifact-path": (lambda c: c["artifacts"].__setitem__("../x", {"sha256": "0" * 64}), "plain file name"),
    "tolerance-negative": (lambda c: c.__setitem__("sample_reference", {"tolerance": -1}), "tolerance"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CARD_VALUES))
def test_every_card_field_is_validated_at_load(kind: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from pneumo_desktop.core import model_card as mc
    from pneumo_desktop.core.runtime import PneumoniaModel

    change, words = BAD_CARD_VALUES[kind]
    card = json.loads((tiny_model_dir / mc.CARD_FILENAME).read_text())
    if ("subtype" in kind and card.get("subtype") is None) or ("refusal" in kind and card.get("refusal") is None):
        pytest.skip("the tiny model has no such section")
    folder = _model_variant(tiny_model_dir, tmp_path, change)
    with pytest.raises(mc.ModelIntegrityError) as caught:
        PneumoniaModel.load(folder)
    assert "malformed" in str(caught.value) and words in str(caught.value)


def test_export_writes_a_manifest_covering_the_card(tiny_model_dir: Path) -> None:
    from pneumo_desktop.core import model_card as mc

    manifest = json.loads((tiny_model_dir / mc.MANIFEST_FILENAME).read_text())["files"]
    assert set(manifest) == {mc.CARD_FILENAME, mc.TFLITE_FILENAME, mc.KERAS_FILENAME}
    for name, sha in manifest.items():
        assert mc.sha256_of_file(tiny_model_dir / name) == sha


def test_a_changed_card_is_detected_at_load_and_by_self_test(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from pneumo_desktop.core import model_card as mc
    from pneumo_desktop.core.runtime import PneumoniaModel

    # a plausible edit: the threshold moved, model.tflite untouched (its checksum in the card still matches)
    folder = _model_variant(tiny_model_dir, tmp_path, lambda c: c["threshold"].__setitem__("value", 0.01),
                            manifest=False)
    with pytest.raises(mc.ModelIntegrityError, match=r"model card .* was changed after export"):
        PneumoniaModel.load(folder)
    assert cli.main(["--self-test", "--model", str(folder)]) == 3
    assert "self-test FAILED" in capsys.readouterr().out
    (folder / mc.MANIFEST_FILENAME).unlink()
    with pytest.raises(mc.ModelIntegrityError, match=r"no manifest\.json"):
        PneumoniaModel.load(folder)


def test_the_bundled_model_has_a_valid_manifest() -> None:
    from pneumo_desktop.core import model_card as mc
    from pneumo_desktop.core.resources import bundled_model_dir

    folder = bundled_model_dir()
    if not (folder / mc.CARD_FILENAME).is_file():
        pytest.skip("no bundled model")
    checked = mc.verify_manifest(folder, mc.load_model_card(folder), required=(mc.CARD_FILENAME, mc.TFLITE_FILENAME))
    assert mc.CARD_FILENAME in checked and mc.TFLITE_FILENAME in checked


# ------------------------------------------------------------------ memory bound: generated bombs

BOMB_LIMIT_MIB = 1024


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="peak RSS through resource (POSIX)")
@pytest.mark.parametrize("kind", ["png-rgb-100mpx", "png-rgb-64mpx", "png-16bit-100mpx", "jpeg-grey-100mpx",
                                  "jpeg-rgb-100mpx", "tiff-float-100mpx", "tiff-float-49mpx", "dicom-jpeg-100mpx"])
def test_decoding_a_bomb_stays_under_1_gb(kind: str, tmp_path: Path) -> None:
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    path = tmp_path / f"bomb-{kind}"
    subprocess.run([sys.executable, "-m", "tests.bombs", "make", kind, str(path)], check=True, cwd=root, env=env,
                   timeout=600)
    done = subprocess.run([sys.executable, "-m", "tests.bombs", "decode", str(path)], capture_output=True, text=True,
                          cwd=root, env=env, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    outcome, peak = done.stdout.split()
    print(f"{kind}: {outcome} peak {peak} MiB")
    assert float(peak) < BOMB_LIMIT_MIB, f"{kind}: {outcome} peaked at {peak} MiB"


# ------------------------------------------------------------------ fuzzing the loaders (make fuzz: many more)

FUZZ_CASES = 800  # about 25 s on a loaded 2-core machine


def test_fuzzed_files_give_an_image_or_a_pneumo_error() -> None:
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "tests.fuzz_loaders", "--count", str(FUZZ_CASES), "--seed", "7",
                           "--per-file-s", "10"], capture_output=True, text=True, cwd=root, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"fuzz: {FUZZ_CASES} cases" in done.stdout and "FAIL" not in done.stdout
    print(done.stdout.strip().splitlines()[-1])
