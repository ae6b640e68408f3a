"""Screenshots of the real main window for the docs: docs/screenshots/single.png, dicom.png, refused.png, batch.png.

Runs the app under Xvfb with the xcb platform (the same code path as a desktop session) unless a
DISPLAY is already set. Uses the bundled model when resources/model exists, else `--model DIR`, else
builds the tiny test model with the trainer (TensorFlow needed for that fallback only).

    .venv/bin/python scripts/screenshots.py [--model DIR] [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from gui_harness import link_copies, pick_model, qt_wait, qt_wait_signal, start_xvfb, stop_xvfb, wait_exposed  # noqa: E402

SAMPLES = REPO / "resources" / "samples"
SINGLE_SAMPLE = "person1345_bacteria_3426.jpeg"
BATCH_FILES = 120
WINDOW_SIZE = (1280, 800)
MAX_PNG_BYTES = 300_000  # docs stay small: a larger shot is reduced to a 256-colour palette

log = logging.getLogger("screenshots")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: bundled, else tiny)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    xvfb = start_xvfb()
    scratch = Path(tempfile.mkdtemp(prefix="pneumo-shots-"))
    try:
        model_dir, model_note = pick_model(args.model, scratch)
        return take(model_dir, model_note, args.out, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        stop_xvfb(xvfb)


def take(model_dir: Path, model_note: str, out: Path, scratch: Path) -> int:
    from PySide6.QtCore import QSettings

    from pneumo_desktop.gui.app import create_application
    from pneumo_desktop.gui.main_window import MainWindow
    from pneumo_desktop.gui.model_loading import default_model_loader
    from pneumo_desktop.gui.options import OverlayOptions
    from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings

    app = create_application()
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(scratch / "qsettings"))
    settings = SettingsStore(ini_qsettings(scratch / "settings.ini"))  # never the user's settings
    window = MainWindow(model_loader=default_model_loader(model_dir), settings=settings)
    window.resize(*WINDOW_SIZE)
    window.show()
    wait_exposed(window)

    def wait(signal, timeout_ms: int = 120_000) -> None:
        qt_wait_signal(signal, timeout_ms)

    def settle(ms: int = 300) -> None:
        qt_wait(ms)

    if window.model is None:
        wait(window.modelReady)
    if window.model is None:
        raise SystemExit(f"model did not load: {window.model_error}")
    out.mkdir(parents=True, exist_ok=True)

    # 1. One image with the overlay.
    window.overlay_controls.set_options(OverlayOptions(enabled=True, opacity=0.45, colormap="jet", cutoff=0.2))
    samples = sorted(SAMPLES.glob("*.jpeg"))
    window.open_paths(samples)
    target = samples.index(SAMPLES / SINGLE_SAMPLE)
    window.file_list.select_row(target)
    wait(window.predictionShown)
    while not window.rendering_idle():
        qt_wait(20)
    settle()
    single = out / "single.png"
    save(window.grab(), single)

    # 2. A 12-bit DICOM with its stored window, header panel and pixel readout.
    dicom = make_dicom(SAMPLES / SINGLE_SAMPLE, scratch / "chest.dcm")
    window.overlay_controls.enabled_box.setChecked(False)
    window.open_paths([dicom])
    wait(window.predictionShown)
    while not window.rendering_idle():
        qt_wait(20)
    bar = window.right_panel.verticalScrollBar()
    bar.setValue(bar.maximum())  # the DICOM header panel sits below the display controls
    settle()
    window.display.on_pixel_hovered((400, 500))  # what the status bar shows under the cursor
    save(window.grab(), out / "dicom.png")
    window.overlay_controls.enabled_box.setChecked(True)
    bar.setValue(0)

    # 3. A photo: refused as not a chest X-ray (its own state, the reason, "Score anyway", no map).
    from PIL import Image
    from skimage import data as skimage_data

    photo = scratch / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    window.open_paths([photo])
    wait(window.predictionShown)
    settle()
    save(window.grab(), out / "refused.png")

    # 4. A folder mid-batch, sorted by P(pneumonia): copies of the samples, grabbed once ~40% are scored.
    folder = scratch / "study_folder"
    link_copies(samples, folder, BATCH_FILES)
    done = [0]
    window.batch_actions.runner.progressMany.connect(lambda items: done.__setitem__(0, items[-1].done))
    window.start_batch(folder, scratch / "scores.csv")  # lists the folder and shows its first image
    wait(window.predictionShown, 60_000)
    deadline = time.monotonic() + 300
    while done[0] < BATCH_FILES * 0.4 and window.batch_actions.running and time.monotonic() < deadline:
        qt_wait(10)
    from PySide6.QtCore import Qt

    from pneumo_desktop.gui.file_list import FileListModel

    window.file_list.sortByColumn(FileListModel.COLUMN_PROBABILITY, Qt.SortOrder.DescendingOrder)
    window.file_list.scrollToTop()
    settle()
    batch = out / "batch.png"
    save(window.grab(), batch)
    log.info("%d of %d scored at the time", done[0], BATCH_FILES)
    window.cancel_batch()
    if window.batch_actions.running:
        wait(window.batchFinished)
    window.close()
    app.processEvents()
    log.info("model used: %s", model_note)
    return 0


def save(pixmap, path: Path) -> None:
    """Write a screenshot, reduced to a 256-colour palette PNG (Pillow) when it would be large."""
    from PIL import Image

    pixmap.save(str(path))
    if path.stat().st_size > MAX_PNG_BYTES:
        with Image.open(path) as shot:
            reduced = shot.convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG)
        reduced.save(path, optimize=True)
    log.info("wrote %s (%d KB)", path, path.stat().st_size // 1024)


def make_dicom(source: Path, path: Path) -> Path:
    """A 12-bit DX DICOM made from a sample JPEG (values x16), with a stored window and a few header tags."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    grey = np.asarray(Image.open(source).convert("L"), dtype=np.uint16) * 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PatientName, ds.PatientID, ds.PatientSex = "Sample^Anonymous", "SAMPLE-0001", "O"
    ds.StudyDate, ds.StudyDescription, ds.SeriesDescription = "20260101", "Chest PA (sample)", "made from a sample JPEG"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = grey.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
