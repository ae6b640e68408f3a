"""The typed interface between the main window and its controllers.

A controller never sees `MainWindow` itself, only `WindowHost`: the widgets, settings and services it may
use. mypy checks that MainWindow provides all of it (main_window.py passes `self` where a WindowHost is
expected), so a renamed widget or method breaks the type check, not a click at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import QDialog, QMessageBox

if TYPE_CHECKING:
    from PySide6.QtCore import QThreadPool
    from PySide6.QtWidgets import QGroupBox, QLabel, QStatusBar, QWidget

    from ...core.runtime import PneumoniaModel
    from ..file_list import FileListModel, FileListView
    from ..image_view import ImageView
    from ..overlay_controls import DisplayControls, OverlayControls
    from ..prediction_panel import PredictionPanel
    from ..settings import SettingsStore

DialogT = TypeVar("DialogT", bound=QDialog)


class WindowHost(Protocol):
    """What the controllers need from the main window."""

    settings: SettingsStore
    pool: QThreadPool  # display work and evaluation (the batch has its own pool)
    model: PneumoniaModel | None
    model_error: str  # why there is no model ("" while loading or loaded)

    # Widgets the controllers update
    file_model: FileListModel
    file_list: FileListView
    file_header: QLabel
    other_files_label: QLabel
    view: ImageView
    view2: ImageView
    prediction_panel: PredictionPanel
    overlay_controls: OverlayControls
    display_controls: DisplayControls
    header_panel: QGroupBox
    header_text: QLabel
    zoom_label: QLabel
    pixel_label: QLabel
    model_status_label: QLabel

    def widget(self) -> QWidget:
        """The parent for dialogs (the window itself)."""
        ...

    def statusBar(self) -> QStatusBar: ...

    def setWindowTitle(self, title: str) -> None: ...

    def message(self, kind: str, title: str, text: str, informative: str = "") -> QMessageBox:
        """A non-blocking message box (kind: critical, warning, information); recorded in `last_message`."""
        ...

    def keep(self, dialog: DialogT) -> DialogT:
        """Hold a reference to an open non-modal dialog until it closes."""
        ...

    def update_actions(self) -> None:
        """Enable or disable every area's actions for the current state."""
        ...

    def start_folder(self) -> Path:
        """Where file dialogs start (the last folder used, else home)."""
        ...


def make_action(
    parent: QWidget,
    text: str,
    slot: Callable[..., object],
    shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None,
    icon: QIcon | None = None,
    checkable: bool = False,
    tip: str = "",
) -> QAction:
    """A menu/toolbar action: `slot` gets `triggered` (or `toggled` when checkable)."""
    action = QAction(text, parent)
    if icon is not None:
        action.setIcon(icon)
    if shortcut is not None:
        action.setShortcut(QKeySequence(shortcut))
    action.setCheckable(checkable)
    if tip:
        action.setToolTip(tip)
        action.setStatusTip(tip)
    (action.toggled if checkable else action.triggered).connect(slot)
    return action


def html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
