"""Screenshots of the evaluation and calibration dialogs: docs/screenshots/{evaluate,evaluate_roc,evaluate_audit,
calibrate}.png.

Runs the real main window under Xvfb (xcb) like scripts/screenshots.py. The labelled folder is --data, else the
development test half (../shared/data/test_half_a) when present, else the bundled samples sorted by name.
Site profiles and cached scores go to a scratch folder, never the user's config.

    .venv/bin/python scripts/screenshots_evaluation.py [--data DIR] [--model DIR] [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from gui_harness import pick_model, qt_wait, qt_wait_signal, start_xvfb, stop_xvfb, wait_exposed  # noqa: E402

SAMPLES = REPO / "resources" / "samples"
TEST_HALF = REPO.parent / "shared" / "data" / "test_half_a"

log = logging.getLogger("screenshots")


def samples_folder(scratch: Path) -> Path:
    root = scratch / "samples_labelled"
    for path in sorted(SAMPLES.glob("*.jpeg")):
        label = "PNEUMONIA" if path.name.startswith("person") else "NORMAL"
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / label / path.name)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scratch = Path(tempfile.mkdtemp(prefix="pneumo-eval-shots-"))
    os.environ["PNEUMO_DESKTOP_CONFIG_DIR"] = str(scratch / "config")
    xvfb = start_xvfb()
    try:
        data = args.data or (TEST_HALF if (TEST_HALF / "NORMAL").is_dir() else samples_folder(scratch))
        model_dir, note = pick_model(args.model, scratch)
        return take(model_dir, data, args.out, scratch, note)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        stop_xvfb(xvfb)


def take(model_dir: Path, data: Path, out: Path, scratch: Path, note: str) -> int:
    from pneumo_desktop.gui.app import create_application
    from pneumo_desktop.gui.main_window import MainWindow
    from pneumo_desktop.gui.model_loading import default_model_loader
    from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings

    app = create_application()
    window = MainWindow(
        model_loader=default_model_loader(model_dir), settings=SettingsStore(ini_qsettings(scratch / "s.ini"))
    )
    window.resize(1100, 760)
    window.show()
    wait_exposed(window)

    def wait(signal, timeout_ms: int = 600_000) -> None:
        qt_wait_signal(signal, timeout_ms)

    if window.model is None:
        wait(window.modelReady)
    out.mkdir(parents=True, exist_ok=True)

    dialog = window.site_actions.open_evaluate_dialog(data)
    wait(dialog.scoringDone)
    if dialog.evaluation is None:
        raise SystemExit(f"evaluation failed: {dialog.error}")
    dialog.resize(640, 660)
    qt_wait(300)
    dialog.grab().save(str(out / "evaluate.png"))
    dialog.tabs.setCurrentIndex(1)
    qt_wait(200)
    dialog.grab().save(str(out / "evaluate_roc.png"))
    dialog.tabs.setCurrentWidget(dialog.audit_tab)  # the explanation audit (light: map mass + shortcut tests)
    dialog.audit_tab.start()
    wait(dialog.audit_tab.auditDone)
    qt_wait(300)
    dialog.grab().save(str(out / "evaluate_audit.png"))
    dialog.close()

    calibrate = window.site_actions.open_calibrate_dialog(data)
    wait(calibrate.scoringDone)  # resumes the scores the evaluation wrote
    calibrate.name.setText("Ward A")
    calibrate.resize(560, 700)
    qt_wait(300)
    calibrate.grab().save(str(out / "calibrate.png"))
    calibrate.close()
    window.close()
    app.processEvents()
    log.info("wrote %s/{evaluate,evaluate_roc,evaluate_audit,calibrate}.png on %s with the %s", out, data, note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
