"""Issue 16: what hospital exports, full disks, pipes and two users at once do to a run.

Every fixture is generated here (from the sample X-rays): DICOM in the syntaxes PACS and CR readers
write (encoded by GDCM or imagecodecs), hostile folder entries (FIFOs, broken links, odd names),
failing writes (ENOSPC, closed pipes) and malformed model cards.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_desktop import cli
from pneumo_desktop.core import batch, imaging, reading
from pneumo_desktop.core.batch import (
    CSV_COLUMNS,
    OutputError,
    OutputLockedError,
    ResultsFileError,
    lock_path,
    score_paths,
)
from pneumo_desktop.core.imaging import (
    ImageLoadError,
    ImplausibleGeometryError,
    UnsupportedEncodingError,
    find_images,
    load_image,
    read_image_file,
    scale_to_uint8,
)
from pneumo_desktop.core.model_card import ModelIntegrityError, load_model_card
from tests.imaging_helpers import sample_grey, write_dicom
from tests.test_batch import read_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
POSIX = os.name == "posix"


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return sample_grey(0, max_side=256)


@pytest.fixture(scope="module")
def stored12(grey: np.ndarray) -> np.ndarray:
    """12-bit data as a CR reader stores it (not a multiple of 16: the low bits matter)."""
    return grey.astype(np.uint16) * 16 + 3


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# ====================================================================== inputs read wrongly


def test_16bit_white_is_zero_tiff_is_not_read_as_its_negative(tmp_path: Path, stored12: np.ndarray) -> None:
    Image.fromarray(stored12).save(tmp_path / "wiz.tif", tiffinfo={262: 0})  # 0 = WhiteIsZero
    Image.fromarray(stored12).save(tmp_path / "biz.tif", tiffinfo={262: 1})
    # the fixture is what it claims (Image.open is typed ImageFile; a TIFF's TiffImageFile has tag_v2)
    assert Image.open(tmp_path / "wiz.tif").tag_v2[262] == 0  # type: ignore[attr-defined]
    white_is_zero = load_image(tmp_path / "wiz.tif").grey
    black_is_zero = load_image(tmp_path / "biz.tif").grey
    assert np.array_equal(black_is_zero, scale_to_uint8(stored12))
    assert np.array_equal(white_is_zero, 255 - scale_to_uint8(stored12))


def test_8bit_white_is_zero_tiff_stays_right(tmp_path: Path, grey: np.ndarray) -> None:
    Image.fromarray(grey).save(tmp_path / "wiz8.tif", tiffinfo={262: 0})
    raw = Image.open(tmp_path / "wiz8.tif")
    expected = np.asarray(raw.convert("L"))  # Pillow's own handling of 8-bit WhiteIsZero
    assert np.array_equal(load_image(tmp_path / "wiz8.tif").grey, expected)


def _padded_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    import pydicom

    padded = np.zeros((stored.shape[0] + 80, stored.shape[1] + 80), np.uint16)  # a padded background
    padded[40:-40, 40:-40] = stored // 2 + 1000  # the image itself never reaches the padding value
    write_dicom(path, padded, photometric=photometric)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00280120, "US", 0)  # PixelPaddingValue
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_pixel_padding_does_not_set_the_range(tmp_path: Path, stored12: np.ndarray, photometric: str) -> None:
    plain = write_dicom(tmp_path / "plain.dcm", stored12 // 2 + 1000, photometric=photometric)
    padded = load_image(_padded_dicom(tmp_path / "padded.dcm", stored12, photometric)).grey
    reference = load_image(plain).grey
    assert np.array_equal(padded[40:-40, 40:-40], reference), "the image inside the padding is read as without it"
    assert (padded[:40] == 0).all(), "padding is shown as the darkest image value"


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_display_values_do_not_let_padding_set_the_window_range(
    tmp_path: Path, stored12: np.ndarray, photometric: str
) -> None:
    image = load_image(_padded_dicom(tmp_path / "padded.dcm", stored12, photometric))
    inner = (stored12 // 2 + 1000).astype(np.float64)
    assert image.raw is not None and image.raw_inverted == (photometric == "MONOCHROME1")
    raw = np.asarray(image.raw, np.float64)
    # the viewer's full-range window is the image's own range, not stretched down to the padding value 0
    assert raw.min() == inner.min() and raw.max() == inner.max()
    assert np.array_equal(raw[40:-40, 40:-40], inner)


def test_padding_range_limit(tmp_path: Path, stored12: np.ndarray) -> None:
    import pydicom

    path = _padded_dicom(tmp_path / "padded.dcm", stored12)
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    arr[:20] = 7  # a second padding value inside the range 0..10
    ds.PixelData = arr.tobytes()
    ds.add_new(0x00280121, "US", 10)  # PixelPaddingRangeLimit
    ds.save_as(path, enforce_file_format=True)
    reference = load_image(write_dicom(tmp_path / "plain.dcm", stored12 // 2 + 1000)).grey
    assert np.array_equal(load_image(path).grey[40:-40, 40:-40], reference)


@pytest.mark.parametrize("size", [(1, 1), (10000, 50), (50, 10000), (20, 400)])
def test_implausible_geometry_is_refused_with_the_size(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    path = write_png(tmp_path / "odd.png", np.full((height, width), 128, np.uint8))
    with pytest.raises(ImplausibleGeometryError, match=f"implausible image (size|shape) {width}x{height} px"):
        load_image(path)


def test_plausible_geometry_is_kept(tmp_path: Path) -> None:
    for width, height in ((imaging.MIN_IMAGE_SIDE, imaging.MIN_IMAGE_SIDE), (400, 100), (100, 400)):
        path = write_png(tmp_path / f"ok_{width}x{height}.png", np.full((height, width), 9, np.uint8))
        assert load_image(path).grey.shape == (height, width)


def test_implausible_geometry_is_an_error_row_not_a_score(fake_model, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "dot.png", np.zeros((1, 1), np.uint8))
    write_png(folder / "strip.png", np.full((50, 10000), 200, np.uint8))
    write_png(folder / "xray.png", sample_grey(1, max_side=96))
    score_paths([folder], tmp_path / "r.csv", model=fake_model(tmp_path))
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "r.csv")[1]}
    assert rows["dot.png"]["probability"] == "" and "implausible image size 1x1 px" in rows["dot.png"]["error"]
    assert rows["strip.png"]["probability"] == "" and "10000x50" in rows["strip.png"]["error"]
    assert rows["xray.png"]["probability"] != "" and rows["xray.png"]["error"] == ""


# ====================================================================== hospital encodings


def _gdcm_transcode(src: Path, dst: Path, syntax: str) -> Path:
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return dst


def test_the_hospital_decoders_are_a_declared_dependency() -> None:
    """What a hospital sends must decode in every install, not only where someone added a plugin."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (like tests/test_packaging.py)
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless

    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("python-gdcm") for d in dependencies)
    assert not any(d.startswith("pylibjpeg-libjpeg") for d in dependencies), "GPL-3.0: not for an Apache-2.0 app"
    for syntax in (JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless):
        assert get_decoder(syntax).is_available, syntax.name


@pytest.mark.parametrize(
    "syntax",
    [
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1: the usual CR/DX archive syntax
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.5",  # RLE Lossless
    ],
)
def test_compressed_dicom_syntaxes_decode_exactly(tmp_path: Path, stored12: np.ndarray, syntax: str) -> None:
    import pydicom

    plain = write_dicom(tmp_path / "plain.dcm", stored12)
    coded = _gdcm_transcode(plain, tmp_path / "coded.dcm", syntax)
    assert pydicom.dcmread(coded, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    image = load_image(coded)
    assert image.format == "DICOM" and image.bit_depth == 12
    if syntax.endswith(".81"):  # near-lossless: within one grey level of the original
        assert np.abs(image.grey.astype(int) - load_image(plain).grey.astype(int)).max() <= 1
    else:
        assert np.array_equal(image.grey, load_image(plain).grey)


def _jpeg12(stored: np.ndarray, lossless: bool) -> bytes:
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs (a test dependency) encodes 12-bit JPEG")
    if lossless:
        return imagecodecs.ljpeg_encode(stored, bitspersample=12)
    return imagecodecs.jpeg8_encode(stored, bitspersample=12, level=100)


@pytest.mark.parametrize("lossless", [False, True], ids=["extended-12bit", "lossless-12bit"])
def test_plain_12bit_jpeg_files_are_read(tmp_path: Path, stored12: np.ndarray, lossless: bool) -> None:
    data = _jpeg12(stored12, lossless)
    assert data[:2] == b"\xff\xd8" and (b"\xff\xc3" in data if lossless else b"\xff\xc1" in data)
    path = tmp_path / "film.jpg"
    path.write_bytes(data)
    image = load_image(path)
    assert (image.format, image.bit_depth) == ("JPEG", 12)
    difference = np.abs(image.grey.astype(int) - scale_to_uint8(stored12).astype(int))
    assert difference.max() <= (0 if lossless else 1)


def test_dicom_jpeg_extended_12bit_is_read(tmp_path: Path, stored12: np.ndarray) -> None:
    import pydicom
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "ext.dcm", stored12, pixel_data=False, transfer_syntax="1.2.840.10008.1.2.4.51")
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([_jpeg12(stored12, lossless=False)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    image = load_image(path)
    reference = load_image(write_dicom(tmp_path / "plain.dcm", stored12)).grey
    assert image.bit_depth == 12
    assert np.abs(image.grey.astype(int) - reference.astype(int)).max() <= 1


def test_12bit_jpeg_without_a_decoder_is_unsupported_not_damaged(tmp_path: Path, stored12, monkeypatch) -> None:
    path = tmp_path / "film.jpg"
    path.write_bytes(_jpeg12(stored12, lossless=False))
    monkeypatch.setitem(sys.modules, "gdcm", None)  # as if python-gdcm were not installed
    with pytest.raises(UnsupportedEncodingError, match="unsupported encoding 12-bit JPEG"):
        load_image(path)


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, b"\xff\xd8\xff" + b"\x00" * 50, b"II*\x00" + b"\xff" * 50],
    ids=["png", "jpeg", "tiff"],
)
def test_error_messages_carry_no_memory_addresses(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.img"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "0x" not in info.value.reason and "BytesIO" not in info.value.reason, info.value.reason


def test_truncated_rle_dicom_is_reported_as_truncated(tmp_path: Path, stored12: np.ndarray) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    plain = write_dicom(tmp_path / "plain.dcm", stored12)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    data = (tmp_path / "rle.dcm").read_bytes()
    for cut in (len(data) - 100, len(data) // 2):
        (tmp_path / "cut.dcm").write_bytes(data[:cut])
        with pytest.raises(ImageLoadError, match="truncated") as info:
            load_image(tmp_path / "cut.dcm")
        assert "report" not in info.value.reason


# ====================================================================== what the reader accepts


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(result, read_image_file, fifo), daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # unblock the reader so the test run can end
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert isinstance(result[0], ImageLoadError) and "named pipe" in result[0].reason


def _capture(out: list, function, *args) -> None:
    try:
        function(*args)
        out.append(None)
    except BaseException as exc:
        out.append(exc)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_refused_within_bounded_memory() -> None:
    # In a child with a 2 GiB address-space cap: reading /dev/zero to the end would die of MemoryError.
    code = (
        "import resource, sys\n"
        "from pneumo_desktop.core.imaging import ImageLoadError, read_image_file\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "try:\n"
        "    read_image_file('/dev/zero')\n"
        "except ImageLoadError as exc:\n"
        "    print(exc.reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not a regular file" in done.stdout and "device" in done.stdout


def test_the_read_cap_holds_on_bytes_read(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000)
    monkeypatch.setattr(reading, "MAX_FILE_BYTES", 1000)
    real_fstat = os.fstat

    def lying_fstat(fd):  # a file that grows after it was measured (or a size that lies)
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 10,
                               st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(reading.os, "fstat", lying_fstat)
    with pytest.raises(imaging.ImageTooLargeError):
        read_image_file(path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_broken_links_get_a_row_and_linked_files_a_same_file_row(fake_model, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "a.png", sample_grey(0, max_side=96))
    os.symlink(folder / "a.png", folder / "b_link_to_a.png")
    os.symlink(folder / "gone.png", folder / "c_broken.png")
    assert [p.name for p in find_images([folder])] == ["a.png", "c_broken.png"]
    score_paths([folder], tmp_path / "r.csv", model=fake_model(tmp_path))
    rows = read_csv(tmp_path / "r.csv")[1]
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b_link_to_a.png", "c_broken.png"]
    assert rows[0]["probability"] and not rows[0]["error"]
    assert rows[1]["error"].startswith(f"same file as {folder / 'a.png'}") and rows[1]["status"] == "error"
    assert "broken link" in rows[2]["error"] and "gone.png" in rows[2]["error"]


def test_deeply_nested_folders_are_walked(tmp_path: Path) -> None:
    top = tmp_path / "deep"
    top.mkdir()
    deep = top
    try:
        for _ in range(1100):
            deep = deep / "d"
            deep.mkdir()  # one by one: os.makedirs itself recurses
        write_png(deep / "x.png", sample_grey(0, max_side=64))
        assert [p.name for p in find_images([top], recursive=True)] == ["x.png"]
    finally:
        _remove_tree_iteratively(top)  # shutil.rmtree (and pytest's clean-up) recurse too


def _remove_tree_iteratively(top: Path) -> None:
    folders, stack = [], [str(top)]
    while stack:
        folder = stack.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)


# ====================================================================== the CSV


@pytest.mark.skipif(not POSIX, reason="POSIX file names")
def test_carriage_returns_in_names_are_quoted_and_resume_does_not_duplicate(fake_model, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["cr\rname.png", "lf\nname.png", "plain.png"]
    for i, name in enumerate(names):
        write_png(folder / name, sample_grey(i, max_side=64))
    out = tmp_path / "r.csv"
    model = fake_model(tmp_path)
    score_paths([folder], out, model=model)
    assert b'cr\rname.png"' in out.read_bytes()  # quoted
    _, rows = read_csv(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(names)
    summary = score_paths([folder], out, model=model, resume=True)
    assert (summary.resumed, summary.scored) == (3, 0)
    assert len(read_csv(out)[1]) == 3


@pytest.mark.skipif(sys.platform != "linux", reason="byte file names")
def test_non_utf8_names_keep_the_csv_valid_utf8_and_resume_works(fake_model, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    raw_name = b"r\xe9sum\xe9.png"  # Latin-1, as an old export tool writes it
    with open(os.fsencode(folder) + b"/" + raw_name, "wb") as handle:
        Image.fromarray(sample_grey(0, max_side=64)).save(handle, format="PNG")
    os.symlink(b"gone\xff.png", os.fsencode(folder) + b"/z_link.png")  # its error names the target
    out = tmp_path / "r.csv"
    model = fake_model(tmp_path)
    score_paths([folder], out, model=model)
    text = out.read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    assert "r\\xe9sum\\xe9.png" in text and "gone\\xff.png" in text
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 3 and rows[1][CSV_COLUMNS.index("error")] == ""
    summary = score_paths([folder], out, model=model, resume=True)
    assert (summary.resumed, summary.scored) == (2, 0)


def test_resume_refuses_another_threshold_or_model(fake_model, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"{i}.png", sample_grey(i, max_side=64))
    out = tmp_path / "r.csv"
    model = fake_model(tmp_path)
    score_paths([folder / "0.png"], out, model=model, threshold=0.5)
    before = out.read_bytes()
    with pytest.raises(ResultsFileError, match=r"threshold 0\.5, this run uses 0\.7"):
        score_paths([folder], out, model=model, resume=True, threshold=0.7)
    other = fake_model(tmp_path)
    object.__setattr__(other.card, "artifacts", {"model.tflite": "e" * 64})
    with pytest.raises(ResultsFileError, match="another model"):
        score_paths([folder], out, model=other, resume=True, threshold=0.5)
    assert out.read_bytes() == before
    summary = score_paths([folder], out, model=model, resume=True, threshold=0.5)  # same settings: fine
    assert (summary.resumed, summary.scored) == (1, 2)


# ====================================================================== two runs, one CSV


@pytest.mark.parametrize("mode", ["fresh", "resume"])
def test_a_second_run_on_the_same_csv_is_refused(fake_model, tmp_path: Path, mode: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        write_png(folder / f"{i}.png", sample_grey(i, max_side=64))
    out = tmp_path / "r.csv"
    first_started, release = threading.Event(), threading.Event()

    def hold(progress) -> None:  # the first run stops after its first row until released
        first_started.set()
        release.wait(30)

    first = threading.Thread(target=score_paths, args=([folder], out),
                             kwargs={"model": fake_model(tmp_path), "progress": hold})
    first.start()
    try:
        assert first_started.wait(30)
        with pytest.raises(OutputLockedError, match="another run"):
            score_paths([folder], out, model=fake_model(tmp_path), resume=mode == "resume")
    finally:
        release.set()
        first.join(60)
    rows = read_csv(out)[1]
    assert sorted(Path(r["path"]).name for r in rows) == [f"{i}.png" for i in range(6)], "no row twice, none lost"


def test_cli_second_run_exits_5_and_a_finished_csv_is_not_replaced(
    fake_model, tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    from filelock import FileLock

    image = write_png(tmp_path / "x.png", sample_grey(0, max_side=96))
    out = tmp_path / "r.csv"
    model = ["--model", str(tiny_model_dir), "-q"]
    with FileLock(lock_path(out), timeout=0):  # another run holds the CSV
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert cli.main(["score", str(image), "-o", str(out)] + model + extra) == 5
            err = capsys.readouterr().err
            assert "being written by another run" in err and "Traceback" not in err
    assert not out.exists() or out.read_bytes() == b""
    assert cli.main(["score", str(image), "-o", str(out)] + model) == 0
    capsys.readouterr()
    finished = out.read_bytes()
    # a fresh run that starts after the first has finished (past the CLI's early check) must not truncate it
    with pytest.raises(ResultsFileError, match="already exists"):
        score_paths([image], out, model=fake_model(tmp_path), overwrite=False)
    assert out.read_bytes() == finished


# ====================================================================== full disks and pipes


def _failing_write(after_rows: int, error: int, target: Path):
    """os.write that writes `after_rows` rows of `target`, then half of the next one, then fails.

    Only writes to `target` are counted and failed: os.write is patched process-wide, and other writers (the
    scoring log's background thread) must neither use up the count nor hit the full disk meant for the CSV."""
    real_write = os.write
    state = {"rows": 0}

    def is_target(fd) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(target))
        except OSError:
            return False

    def write(fd, data):
        if data.startswith(b"path,") or not is_target(fd):
            return real_write(fd, data)
        if state["rows"] >= after_rows:
            real_write(fd, data[: len(data) // 2])  # the disk fills up in the middle of a row
            raise OSError(error, os.strerror(error))
        state["rows"] += 1
        return real_write(fd, data)

    return write


def test_full_disk_leaves_whole_rows_only(fake_model, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(7):
        write_png(folder / f"{i}.png", sample_grey(i, max_side=64))
    out = tmp_path / "r.csv"
    monkeypatch.setattr(batch.os, "write", _failing_write(3, errno.ENOSPC, out))
    with pytest.raises(OutputError, match="No space left on device"):
        score_paths([folder], out, model=fake_model(tmp_path))
    monkeypatch.undo()
    assert len(read_csv(out)[1]) == 3  # read_csv asserts whole lines and whole rows
    summary = score_paths([folder], out, model=fake_model(tmp_path), resume=True)
    assert (summary.resumed, summary.scored) == (3, 4)


def test_cli_full_disk_is_exit_4_with_one_line(tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    images = [write_png(tmp_path / f"{i}.png", sample_grey(i, max_side=96)) for i in range(3)]
    out = tmp_path / "r.csv"
    monkeypatch.setattr(batch.os, "write", _failing_write(1, errno.ENOSPC, out))
    status = cli.main(["score", *map(str, images), "-o", str(out), "--model", str(tiny_model_dir), "-q"])
    err = capsys.readouterr().err
    assert status == 4, err
    assert "No space left on device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert len(read_csv(out)[1]) == 1


def test_heatmaps_on_a_full_disk_stop_cleanly(tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    image = write_png(tmp_path / "x.png", sample_grey(0, max_side=96))
    out = tmp_path / "r.csv"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(batch, "write_png_atomic", no_space)
    status = cli.main(["score", str(image), "-o", str(out), "--heatmaps", str(tmp_path / "heat"),
                       "--model", str(tiny_model_dir), "-q"])
    err = capsys.readouterr().err
    assert status == 4 and "heat map" in err and "No space left" in err and "Traceback" not in err
    assert read_csv(out)[1] == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_dev_full_is_exit_4(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    image = write_png(tmp_path / "x.png", sample_grey(0, max_side=96))
    status = cli.main(["score", str(image), "-o", "/dev/full", "--model", str(tiny_model_dir), "-q"])
    err = capsys.readouterr().err
    assert status == 4 and "No space left on device" in err and "Traceback" not in err


def test_dash_writes_the_csv_to_stdout(tiny_model_dir: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    images = [write_png(tmp_path / f"{i}.png", sample_grey(i, max_side=96)) for i in range(2)]
    assert cli.main(["score", *map(str, images), "-o", "-", "--model", str(tiny_model_dir), "-q"]) == 0
    captured = capfd.readouterr()
    rows = list(csv.reader(io.StringIO(captured.out)))
    assert tuple(rows[0]) == CSV_COLUMNS and [Path(r[0]).name for r in rows[1:]] == ["0.png", "1.png"]
    assert not (tmp_path / "-").exists()
    assert cli.main(["score", str(images[0]), "-o", "-", "--resume", "--model", str(tiny_model_dir)]) == 2


@pytest.mark.skipif(not POSIX, reason="POSIX pipes")
@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_a_closed_pipe_is_exit_4_without_a_traceback(tiny_model_dir: Path, tmp_path: Path, target: str) -> None:
    images = [write_png(tmp_path / f"{i}.png", sample_grey(i, max_side=96)) for i in range(3)]
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already exited
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pneumo_desktop", "score", *map(str, images), "-o", target,
             "--model", str(tiny_model_dir), "-q"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300, cwd=REPO_ROOT,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr and "pipe" in done.stderr


# ====================================================================== a hostile folder, end to end


@pytest.mark.skipif(sys.platform != "linux", reason="FIFOs, byte names and links")
def test_score_on_a_hostile_folder_prints_no_traceback_and_gives_every_entry_a_row(
    tiny_model_dir: Path, tmp_path: Path, stored12: np.ndarray
) -> None:
    import pydicom

    folder = tmp_path / "export"
    folder.mkdir()
    write_png(folder / "good.png", sample_grey(0, max_side=128))
    write_png(folder / "dot.png", np.zeros((1, 1), np.uint8))
    os.mkfifo(folder / "pipe.dcm")
    os.symlink(folder / "nowhere.dcm", folder / "broken.dcm")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "cr\rname.png").write_bytes((folder / "good.png").read_bytes() + b"\x00")
    with open(os.fsencode(folder) + b"/latin\xe9.png", "wb") as handle:
        handle.write((folder / "good.png").read_bytes() + b"\x00\x00")
    plain = write_dicom(tmp_path / "plain.dcm", stored12)
    ds = pydicom.dcmread(plain)
    ds.WindowCenter, ds.WindowWidth = "1777.5", "4096"
    ds.save_as(folder / "odd_window.dcm", enforce_file_format=True)
    odd = (folder / "odd_window.dcm").read_bytes()
    assert odd.count(b"1777.5") == 1
    # an invalid DS value as some exporters write it: pydicom warns about it when it is read
    (folder / "odd_window.dcm").write_bytes(odd.replace(b"1777.5", b"abcdef"))
    rle = _gdcm_transcode(plain, tmp_path / "rle.dcm", "1.2.840.10008.1.2.5").read_bytes()
    (folder / "cut_rle.dcm").write_bytes(rle[: len(rle) // 2])
    out = tmp_path / "r.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumo_desktop",
            "score",
            str(folder),
            "-o",
            str(out),
            "--model",
            str(tiny_model_dir),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr
    # LiteRT's own start-up line (printed by its C++ runtime when the model loads) is not about a file
    lines = [line for line in done.stderr.splitlines() if not line.startswith("INFO: Created TensorFlow Lite")]
    assert len(lines) == 1 and lines[0].startswith("done:"), done.stderr
    rows = {Path(r["path"]).name: r for r in read_csv(out)[1]}
    assert len(rows) == len(os.listdir(folder)) == 9
    assert "named pipe" in rows["pipe.dcm"]["error"]
    assert "broken link" in rows["broken.dcm"]["error"]
    assert "implausible image size 1x1 px" in rows["dot.png"]["error"]
    assert "truncated" in rows["cut_rle.dcm"]["error"]
    assert (
        rows["good.png"]["error"] == ""
        and rows["cr\rname.png"]["error"] == ""
        and rows["latin\\xe9.png"]["error"] == ""
    )
    assert rows["odd_window.dcm"]["error"] == ""
    assert all("0x" not in r["error"] for r in rows.values())


# ====================================================================== malformed model cards


def _card_variant(tiny_model_dir: Path, tmp_path: Path, change) -> Path:
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    card = json.loads((folder / "model_card.json").read_text())
    change(card)
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


MALFORMED_CARDS = {
    "artifacts-list": lambda c: c.__setitem__("artifacts", []),
    "artifacts-empty": lambda c: c.__setitem__("artifacts", {}),
    "artifact-no-sha": lambda c: c["artifacts"].__setitem__("model.tflite", {"size": 1}),
    "threshold-5": lambda c: c["threshold"].__setitem__("value", 5),
    "threshold-nan": lambda c: c["threshold"].__setitem__("value", math.nan),
    "threshold-text": lambda c: c["threshold"].__setitem__("value", "high"),
    "temperature-0": lambda c: c.setdefault("calibration", {}).__setitem__("temperature", 0),
    "no-threshold": lambda c: c.pop("threshold"),
}


@pytest.mark.parametrize("variant", sorted(MALFORMED_CARDS))
def test_malformed_cards_are_a_one_line_model_error(tiny_model_dir: Path, tmp_path: Path, variant: str) -> None:
    folder = _card_variant(tiny_model_dir, tmp_path, MALFORMED_CARDS[variant])
    with pytest.raises(ModelIntegrityError) as info:
        load_model_card(folder)
    assert "\n" not in str(info.value) and ("malformed" in str(info.value) or "cannot read" in str(info.value))


@pytest.mark.parametrize("variant", ["artifacts-list", "threshold-5", "threshold-nan"])
def test_every_command_exits_3_on_a_malformed_card(tiny_model_dir: Path, tmp_path: Path, variant: str, capsys) -> None:
    folder = _card_variant(tiny_model_dir, tmp_path, MALFORMED_CARDS[variant])
    image = write_png(tmp_path / "x.png", sample_grey(0, max_side=96))
    commands = [
        ["score", str(image), "-o", str(tmp_path / "r.csv"), "--model", str(folder)],
        ["predict", str(image), "--model", str(folder)],
        ["--version", "--model", str(folder)],
        ["--self-test", "--model", str(folder)],
    ]
    for command in commands:
        assert cli.main(command) == 3, command
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert "Traceback" not in text and "malformed" in text, (command, text)
