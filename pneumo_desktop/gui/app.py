"""GUI entry point: `run_gui(paths)` (called by the `pneumo-desktop` CLI)."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import QStandardPaths, Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from .. import __version__
from .icons import app_icon
from .settings import APPLICATION, ORGANIZATION

log = logging.getLogger(__name__)

ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], None]


def log_file_path() -> Path:
    folder = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppLocalDataLocation))
    return folder / "pneumo-desktop.log"


def setup_logging(level: int = logging.INFO) -> Path | None:
    """Log to stderr and to a rotating file in the user's app-data folder (returns its path)."""
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        stream = logging.StreamHandler()
        stream.setFormatter(formatter)
        root.addHandler(stream)
    path = log_file_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=2_000_000, backupCount=2, encoding="utf-8")
    except OSError as exc:
        log.warning("no log file (%s)", exc)
        return None
    handler.setFormatter(formatter)
    root.addHandler(handler)
    return path


def make_excepthook(parent: Callable[[], QWidget | None], log_path: Path | None = None) -> ExceptHook:
    """An excepthook that logs the traceback and shows a plain dialog instead of crashing.

    PySide6 routes exceptions raised in slots and event handlers to sys.excepthook, so this is
    the single place where an unexpected error meets the user.
    """
    showing = False

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        nonlocal showing
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        log.error("unexpected error:\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
        if showing or QApplication.instance() is None:
            return  # one dialog at a time: an error storm must not bury the window in boxes
        showing = True
        try:
            where = (
                f"Details were written to the log file:\n{log_path}" if log_path else "Details were written to the log."
            )
            box = QMessageBox(
                QMessageBox.Icon.Critical,
                "Unexpected error",
                f"Something went wrong: {exc_type.__name__}: {exc}\n\nThe app will keep running; "
                "if it misbehaves, save your work and restart it.",
                QMessageBox.StandardButton.Ok,
                parent(),
            )
            box.setInformativeText(where)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.finished.connect(lambda _r: _reset())
            box.open()
        except Exception:  # the hook itself must never raise
            log.exception("could not show the error dialog")
            showing = False

    def _reset() -> None:
        nonlocal showing
        showing = False

    return hook


def create_application(argv: Sequence[str] | None = None) -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName(APPLICATION)
    app.setApplicationVersion(__version__)
    app.setWindowIcon(app_icon())
    # Fusion looks the same on every platform, which keeps screenshots and docs honest.
    app.setStyle("Fusion")
    return app


def run_gui(paths: list[Path]) -> int:
    """Start the desktop app, open `paths` (files and/or folders) and run until it is closed."""
    app = create_application()
    log_path = setup_logging()
    # Imported after QApplication exists; the model itself loads in a worker after show().
    from .main_window import MainWindow

    window = MainWindow()
    sys.excepthook = make_excepthook(lambda: window, log_path)
    # Quit when the window closes, whatever else is open (a message box, a running batch's last signal).
    # Direct, not queued: a quit() delivered after exec() returned would stop every later event loop.
    window.closed.connect(app.quit)
    window.show()
    if paths:
        QTimer.singleShot(0, lambda: window.open_paths([Path(p) for p in paths]))
    else:
        QTimer.singleShot(0, window.restore_session)
    log.info("Pneumo Desktop %s started", __version__)
    return int(app.exec())


if __name__ == "__main__":  # python -m pneumo_desktop.gui.app [files or folders]
    raise SystemExit(run_gui([Path(p) for p in sys.argv[1:]]))
