"""Screenshots of the real main window for the docs: docs/screenshots/single.png and batch.png.

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

from gui_harness import link_copies, pick_model, qt_wait, start_xvfb, stop_xvfb, wait_exposed  # noqa: E402

SAMPLES = REPO / "resources" / "samples"
SINGLE_SAMPLE = "person1345_bacteria_3426.jpeg"
BATCH_FILES = 120
WINDOW_SIZE = (1280, 800)

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
    from PySide6.QtCore import QEventLoop, QSettings, QTimer

    from pneumo_desktop.gui.app import create_application
    from pneumo_desktop.gui.main_window import MainWindow
    from pneumo_desktop.gui.options import OverlayOptions
    from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings
    from pneumo_desktop.gui.workers import default_model_loader

    app = create_application()
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(scratch / "qsettings"))
    settings = SettingsStore(ini_qsettings(scratch / "settings.ini"))  # never the user's settings
    window = MainWindow(model_loader=default_model_loader(model_dir), settings=settings)
    window.resize(*WINDOW_SIZE)
    window.show()
    wait_exposed(window)

    def wait(signal, timeout_ms: int = 120_000) -> None:
        loop = QEventLoop()
        signal.connect(loop.quit)
        QTimer.singleShot(timeout_ms, loop.quit)
        loop.exec()

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
    settle()
    single = out / "single.png"
    window.grab().save(str(single))
    log.info("wrote %s", single)

    # 2. A folder mid-batch: copies of the samples, grabbed once ~40% are scored.
    folder = scratch / "study_folder"
    link_copies(samples, folder, BATCH_FILES)
    done = [0]
    window.batch.progress.connect(lambda p: done.__setitem__(0, p.done))
    window.start_batch(folder, scratch / "scores.csv")  # lists the folder and shows its first image
    wait(window.predictionShown, 60_000)
    deadline = time.monotonic() + 300
    while done[0] < BATCH_FILES * 0.4 and window.batch.running and time.monotonic() < deadline:
        qt_wait(10)
    # Scroll so that the list shows where scored rows meet queued ones.
    window.file_list.scrollTo(window.file_model.index(min(done[0] + 10, BATCH_FILES - 1), 0))
    batch = out / "batch.png"
    window.grab().save(str(batch))
    log.info("wrote %s (%d of %d scored at the time)", batch, done[0], BATCH_FILES)
    window.cancel_batch()
    if window.batch.running:
        wait(window.batchFinished)
    window.close()
    app.processEvents()
    log.info("model used: %s", model_note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
