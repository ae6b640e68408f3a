"""Image loading: formats, variants and failures, all derived from the real sample X-rays."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pneumo_desktop.core import imaging
from pneumo_desktop.core.imaging import (
    CorruptImageError,
    DicomDecodeError,
    EmptyFileError,
    ImageLoadError,
    ImageTooLargeError,
    UnsupportedEncodingError,
    UnsupportedFormatError,
    find_images,
    load_image,
)
from tests.imaging_helpers import minmax_u8, png_header_only, sample_grey, sample_paths, write_dicom


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return sample_grey(0, max_side=512)


def _assert_grey_result(img: imaging.LoadedImage, fmt: str) -> None:
    assert img.format == fmt
    assert img.grey.dtype == np.uint8 and img.grey.ndim == 2
    assert (img.height, img.width) == img.grey.shape


# ------------------------------------------------------------------ real samples and 8-bit formats


@pytest.mark.parametrize("path", sample_paths(), ids=lambda p: p.name)
def test_real_samples_load_exactly_as_pillow_decodes_them(path: Path) -> None:
    img = load_image(path)
    _assert_grey_result(img, "JPEG")
    expected = np.asarray(Image.open(path).convert("L"))
    assert np.array_equal(img.grey, expected)
    assert img.bit_depth == 8 and img.path == path


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_lossless_8bit_formats_round_trip(tmp_path: Path, grey: np.ndarray, fmt: str, ext: str) -> None:
    path = tmp_path / f"x{ext}"
    Image.fromarray(grey).save(path, format=fmt)
    img = load_image(path)
    _assert_grey_result(img, fmt)
    assert np.array_equal(img.grey, grey)  # 8-bit data is kept as stored, never re-stretched


def test_rgb_rgba_and_palette_pngs_become_the_same_grey(tmp_path: Path, grey: np.ndarray) -> None:
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    pal = Image.fromarray(grey, mode="L").convert("P")  # L -> P keeps a grey ramp palette
    pal.putpalette([v for i in range(256) for v in (i, i, i)])
    pal.putdata(list(grey.ravel()))
    pal.save(tmp_path / "pal.png")
    for name in ("rgb.png", "rgba.png", "pal.png"):
        img = load_image(tmp_path / name)
        _assert_grey_result(img, "PNG")
        assert np.array_equal(img.grey, grey), name


def test_colour_jpegs_rgb_and_cmyk_are_converted_to_grey(tmp_path: Path, grey: np.ndarray) -> None:
    tint = np.dstack([grey, (grey * 0.9).astype(np.uint8), grey])  # a slightly tinted scan
    Image.fromarray(tint).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(tint).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    reference = np.asarray(Image.fromarray(tint).convert("L"), dtype=np.float64)
    for name in ("rgb.jpg", "cmyk.jpg"):
        assert Image.open(tmp_path / name).mode == name.split(".")[0].upper()
        img = load_image(tmp_path / name)
        _assert_grey_result(img, "JPEG")
        # lossy JPEG: close to the luminance of the original, and certainly not inverted
        assert np.abs(img.grey - reference).mean() < 3.0, name
        assert np.corrcoef(img.grey.ravel(), reference.ravel())[0, 1] > 0.99


# ------------------------------------------------------------------ high bit depth


def test_16bit_png_full_range_scales_back_to_the_8bit_image(tmp_path: Path, grey: np.ndarray) -> None:
    stretched = minmax_u8(grey)
    Image.fromarray(stretched.astype(np.uint16) * 257).save(tmp_path / "x16.png")
    assert Image.open(tmp_path / "x16.png").mode.startswith("I;16")
    img = load_image(tmp_path / "x16.png")
    _assert_grey_result(img, "PNG")
    assert img.bit_depth == 16
    assert np.array_equal(img.grey, stretched)


def test_12bit_data_in_16bit_tiff_is_scaled_by_its_real_range(tmp_path: Path, grey: np.ndarray) -> None:
    stored = grey.astype(np.uint16) * 16 + 7  # 12-bit values: max 4087 of 65535
    Image.fromarray(stored).save(tmp_path / "x12.tiff")
    img = load_image(tmp_path / "x12.tiff")
    _assert_grey_result(img, "TIFF")
    assert img.bit_depth == 16
    assert img.grey.max() == 255  # not a near-black image (which scaling by 65535 would give)
    assert np.abs(img.grey.astype(int) - minmax_u8(stored).astype(int)).max() <= 1


def test_constant_16bit_image_gives_zeros_not_a_division_error(tmp_path: Path) -> None:
    Image.fromarray(np.full((40, 60), 1000, np.uint16)).save(tmp_path / "flat.png")
    img = load_image(tmp_path / "flat.png")
    assert img.grey.shape == (40, 60) and not img.grey.any()


# ------------------------------------------------------------------ EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    base = sample_grey(3, max_side=200)
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(base).save(path, quality=95, exif=exif)
    img = load_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("L"))
    assert np.array_equal(img.grey, expected)
    raw = np.asarray(Image.open(path).convert("L"))
    if orientation == 6:  # independent check: 90 degrees clockwise
        assert np.array_equal(img.grey, np.rot90(raw, -1))
    if orientation in (5, 6, 7, 8):
        assert img.grey.shape == raw.shape[::-1]


# ------------------------------------------------------------------ content, not extension


def test_format_is_recognised_by_content_not_extension(tmp_path: Path, grey: np.ndarray) -> None:
    Image.fromarray(grey).save(tmp_path / "actually_png.jpg", format="PNG")
    (tmp_path / "actually_jpeg.dcm").write_bytes(sample_paths()[0].read_bytes())
    Image.fromarray(grey).save(tmp_path / "no_extension", format="BMP")
    assert load_image(tmp_path / "actually_png.jpg").format == "PNG"
    assert load_image(tmp_path / "actually_jpeg.dcm").format == "JPEG"
    assert load_image(tmp_path / "no_extension").format == "BMP"


# ------------------------------------------------------------------ DICOM


def test_dicom_monochrome2_with_rescale_is_scaled_by_range(tmp_path: Path, grey: np.ndarray) -> None:
    stored = grey.astype(np.uint16) * 16
    path = write_dicom(tmp_path / "m2.dcm", stored, slope=2.0, intercept=-1024.0)
    img = load_image(path)
    _assert_grey_result(img, "DICOM")
    assert img.bit_depth == 12
    assert np.abs(img.grey.astype(int) - minmax_u8(grey).astype(int)).max() <= 1


def test_dicom_window_is_applied_after_the_rescale(tmp_path: Path, grey: np.ndarray) -> None:
    stored = grey.astype(np.uint16) * 16
    slope, intercept = 2.0, -1024.0
    modality = stored * slope + intercept
    lo, hi = np.percentile(modality, [20, 80])
    center, width = (lo + hi) / 2, hi - lo
    path = write_dicom(tmp_path / "win.dcm", stored, slope=slope, intercept=intercept, window=(center, width))
    img = load_image(path)
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), written out independently here
    c, w = center - 0.5, width - 1
    expected = np.rint(np.clip((modality - c) / w + 0.5, 0, 1) * 255).astype(int)
    assert np.abs(img.grey.astype(int) - expected).max() <= 1
    assert (img.grey == 0).mean() > 0.1 and (img.grey == 255).mean() > 0.1  # the window clips both ends


def test_dicom_monochrome1_is_inverted(tmp_path: Path, grey: np.ndarray) -> None:
    stored = (255 - grey.astype(np.uint16)) * 16  # MONOCHROME1: high values are dark
    img = load_image(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    assert np.abs(img.grey.astype(int) - minmax_u8(grey).astype(int)).max() <= 1


def test_dicom_without_extension_and_without_preamble(tmp_path: Path, grey: np.ndarray) -> None:
    stored = grey.astype(np.uint16) * 4
    with_preamble = write_dicom(tmp_path / "IM000001", stored)
    no_preamble = write_dicom(tmp_path / "IM000002", stored, preamble=False)
    bare = write_dicom(tmp_path / "IM000003", stored, preamble=False, file_meta=False)
    assert no_preamble.read_bytes()[128:132] != b"DICM"
    for path in (with_preamble, no_preamble, bare):
        img = load_image(path)
        assert img.format == "DICOM", path.name
        assert np.abs(img.grey.astype(int) - minmax_u8(grey).astype(int)).max() <= 1


def test_dicom_without_pixel_data(tmp_path: Path, grey: np.ndarray) -> None:
    path = write_dicom(tmp_path / "report", grey.astype(np.uint16), pixel_data=False)
    with pytest.raises(DicomDecodeError, match="DICOM has no pixel data"):
        load_image(path)


def test_rle_compressed_dicom_decodes_like_the_uncompressed_one(tmp_path: Path, grey: np.ndarray) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    plain = write_dicom(tmp_path / "plain.dcm", grey.astype(np.uint16) * 16)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    assert np.array_equal(load_image(tmp_path / "rle.dcm").grey, load_image(plain).grey)


def test_compressed_dicom_without_a_decoder_says_unsupported_encoding(tmp_path: Path, grey: np.ndarray) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    path = write_dicom(tmp_path / "htj2k.dcm", grey.astype(np.uint16), pixel_data=False, transfer_syntax=HTJ2KLossless)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnsupportedEncodingError, match=r"unsupported encoding High-Throughput JPEG 2000.* no decoder"):
        load_image(path)


def test_dicom_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    # Rows x Columns claim 40k x 40k but only a few bytes of pixel data exist: the size check must come
    # before any decoding (a decode attempt would fail with a different error).
    path = write_dicom(tmp_path / "bomb.dcm", np.zeros((4, 4), np.uint16), rows_cols=(40_000, 40_000))
    with pytest.raises(ImageTooLargeError, match="40000x40000"):
        load_image(path)


# ------------------------------------------------------------------ failures


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(EmptyFileError, match="file is empty") as info:
        load_image(tmp_path / "empty.png")
    assert info.value.path == tmp_path / "empty.png"
    assert info.value.reason == "file is empty"
    assert "empty.png" in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = sample_paths()[0].read_bytes()
    (tmp_path / "cut.jpeg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match="truncated JPEG"):
        load_image(tmp_path / "cut.jpeg")


def test_truncated_png(tmp_path: Path, grey: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CorruptImageError, match="PNG"):
        load_image(tmp_path / "cut.png")


def test_random_bytes_are_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UnsupportedFormatError, match="not an image"):
        load_image(tmp_path / "noise.jpg")


def test_text_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("patient,label\nBM12,normal\n")
    with pytest.raises(UnsupportedFormatError, match="not an image: looks like text"):
        load_image(tmp_path / "notes.png")


def test_other_known_formats_are_named(tmp_path: Path, grey: np.ndarray) -> None:
    Image.fromarray(grey).save(tmp_path / "x.gif")
    with pytest.raises(UnsupportedFormatError, match="GIF"):
        load_image(tmp_path / "x.gif")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_png_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    for w, h in ((100_000, 100_000), (12_000, 10_000)):  # beyond Pillow's own limit, and only beyond ours
        path = png_header_only(tmp_path / f"bomb_{w}.png", w, h)
        start = time.perf_counter()
        with pytest.raises(ImageTooLargeError, match="too large"):
            load_image(path)
        assert time.perf_counter() - start < 2.0


def test_pixel_limit_is_a_parameter() -> None:
    path = sample_paths()[0]
    with pytest.raises(ImageTooLargeError):
        load_image(path, max_pixels=1000)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_loaded_grey_is_read_only(grey: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(grey).save(tmp_path / "x.png")
    img = load_image(tmp_path / "x.png")
    with pytest.raises(ValueError):
        img.grey[0, 0] = 1


# ------------------------------------------------------------------ find_images


def test_find_images(tmp_path: Path) -> None:
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.jpeg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")  # kept: it becomes an error row
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.dcm").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "d.png").write_bytes(b"x")
    flat = find_images([tmp_path])
    assert [p.name for p in flat] == ["a.jpeg", "b.png", "notes.txt"]
    deep = find_images([tmp_path], recursive=True)
    assert [p.name for p in deep] == ["a.jpeg", "b.png", "notes.txt", "c.dcm"]
    # explicit files are kept as given (even hidden ones); the same file twice is listed once
    explicit = find_images([tmp_path / ".hidden.png", tmp_path, tmp_path / "b.png"])
    assert [p.name for p in explicit] == [".hidden.png", "a.jpeg", "b.png", "notes.txt"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_find_images_does_not_loop_on_symlinked_folders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    # the link is not followed, but it is an entry the user sees: it gets a row saying why it is not read
    assert [p.name for p in find_images([tmp_path], recursive=True)] == ["loop", "x.png"]
    with pytest.raises(ImageLoadError, match="link to a folder"):
        load_image(tmp_path / "sub" / "loop")


def test_reading_a_file_allocates_about_its_size_not_the_file_limit() -> None:
    import tracemalloc

    tracemalloc.start()
    load_image(sample_paths()[0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {sample_paths()[0].stat().st_size} byte file"


def test_dicom_voi_lut_sequence_is_applied(tmp_path: Path, grey: np.ndarray) -> None:
    import pydicom
    from pydicom.dataset import Dataset

    stored = grey.astype(np.uint16) * 16
    path = write_dicom(tmp_path / "lut.dcm", stored)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", [4095 - i for i in range(4096)])  # an inverting VOI LUT
    ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    img = load_image(path)
    assert np.abs(img.grey.astype(int) - (255 - minmax_u8(grey).astype(int))).max() <= 1


def test_multiframe_dicom_uses_the_first_frame(tmp_path: Path, grey: np.ndarray) -> None:
    import pydicom

    first = grey.astype(np.uint16) * 16
    second = (255 - grey.astype(np.uint16)) * 16
    path = write_dicom(tmp_path / "multi.dcm", first)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([first, second]).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    img = load_image(path)
    assert img.grey.shape == grey.shape
    assert np.abs(img.grey.astype(int) - minmax_u8(grey).astype(int)).max() <= 1
