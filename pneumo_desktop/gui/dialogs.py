"""Dialogs: non-blocking messages, the resume question and the About box."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QMessageBox, QTextBrowser, QVBoxLayout, QWidget

from .model_info import about_html

if TYPE_CHECKING:
    from ..core.model_card import ModelCard

_ICONS = {
    "critical": QMessageBox.Icon.Critical,
    "warning": QMessageBox.Icon.Warning,
    "information": QMessageBox.Icon.Information,
}


def show_message(parent: QWidget, kind: str, title: str, text: str, informative: str = "") -> QMessageBox:
    """Open a window-modal message box without blocking (a worker result never waits on a modal loop)."""
    box = QMessageBox(_ICONS.get(kind, QMessageBox.Icon.NoIcon), title, text, QMessageBox.StandardButton.Ok, parent)
    if informative:
        box.setInformativeText(informative)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


class ResumeChoice(enum.Enum):
    RESUME = "resume"
    START_OVER = "start over"
    CANCEL = "cancel"


def ask_resume(parent: QWidget, output: Path) -> ResumeChoice:
    """The output CSV exists: resume it (default), start over, or cancel. Modal: the user is choosing."""
    box = QMessageBox(QMessageBox.Icon.Question, "CSV exists", f"{output.name} already exists.", parent=parent)
    box.setInformativeText("Resume keeps its rows and scores only the files not in it yet. Start over replaces it.")
    resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
    start_over = box.addButton("Start Over", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(resume)
    box.exec()
    if box.clickedButton() is resume:
        return ResumeChoice.RESUME
    if box.clickedButton() is start_over:
        return ResumeChoice.START_OVER
    return ResumeChoice.CANCEL


class AboutDialog(QDialog):
    """Version, research-use statement, model card (with validation metrics) and data attribution."""

    def __init__(self, card: ModelCard | None, model_error: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About Pneumo Desktop")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.browser = QTextBrowser()
        self.browser.setObjectName("aboutText")
        self.browser.setOpenExternalLinks(True)
        self.browser.setHtml(about_html(card, model_error))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
        self.resize(560, 560)
