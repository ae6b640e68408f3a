"""The left-hand list of opened images and their status (queued, scored, or the error)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from .icons import STATUS_COLOURS, RowStatus, status_icon
from .qt_compat import emit


def path_key(path: Path | str) -> str:
    """Normalised key so paths from the list, the worker and the CSV match."""
    return os.path.normcase(os.path.abspath(os.fspath(path)))


def format_probability(probability: float) -> str:
    return f"{probability:.3f}"


@dataclass(frozen=True)
class FileEntry:
    path: Path
    status: RowStatus = RowStatus.QUEUED
    probability: float | None = None
    label: str = ""
    error: str = ""
    refusal: str = ""  # why the model refused (or, when overridden, would have refused) this image
    overridden: bool = False

    @property
    def result_text(self) -> str:
        if self.status is RowStatus.ERROR:
            return f"Error: {self.error}"
        if self.status is RowStatus.REFUSED:
            return "refused"  # the reason is in the tooltip and the result panel
        if self.overridden and self.probability is not None:
            return f"{format_probability(self.probability)}  {self.label} *"
        if self.status is RowStatus.WORKING:
            return "scoring…"
        if self.probability is not None:
            return f"{format_probability(self.probability)}  {self.label}"
        return "queued"


_COLOURED = (RowStatus.ERROR, RowStatus.POSITIVE, RowStatus.NORMAL, RowStatus.REFUSED)


class FileListModel(QStandardItemModel):
    """Two columns: file name (with a status icon) and result.

    A QStandardItemModel on purpose: its data lives in C++, so painting the list never calls back
    into Python. With a Python data() every repaint made hundreds of calls that each had to win
    the GIL from the batch threads, which stalled the event loop during a batch.
    """

    COLUMN_NAME = 0
    COLUMN_RESULT = 1
    HEADERS = ("Image", "Result")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(0, 2, parent)
        self.setHorizontalHeaderLabels(list(self.HEADERS))
        self._entries: list[FileEntry] = []
        self._rows: dict[str, int] = {}
        self._positive_label = "PNEUMONIA"

    # -- content --------------------------------------------------------------------------------
    def set_paths(self, paths: list[Path]) -> None:
        self._entries = [FileEntry(Path(p)) for p in paths]
        self._rows = {path_key(e.path): i for i, e in enumerate(self._entries)}
        self.beginResetModel()
        self.blockSignals(True)  # one reset instead of a signal per appended row
        try:
            self.removeRows(0, self.rowCount())
            for entry in self._entries:
                self.appendRow(self._make_items(entry))
        finally:
            self.blockSignals(False)
        self.endResetModel()

    def add_paths(self, paths: list[Path]) -> None:
        for path in (Path(p) for p in paths):
            if path_key(path) in self._rows:
                continue
            entry = FileEntry(path)
            self._rows[path_key(path)] = len(self._entries)
            self._entries.append(entry)
            self.appendRow(self._make_items(entry))

    def _make_items(self, entry: FileEntry) -> list[QStandardItem]:
        name = QStandardItem(entry.path.name)
        result = QStandardItem()
        for item in (name, result):
            item.setEditable(False)
        self._fill(name, result, entry)
        return [name, result]

    def _fill(self, name: QStandardItem, result: QStandardItem, entry: FileEntry) -> None:
        tip = str(entry.path)
        if entry.status is RowStatus.ERROR:
            tip += f"\n\nCould not be read: {entry.error}"
        elif entry.status is RowStatus.REFUSED:
            tip += f"\n\nRefused, not scored: {entry.refusal}"
        elif entry.probability is not None:
            tip += f"\n\nModel output P(pneumonia) = {format_probability(entry.probability)} ({entry.label})"
            if entry.overridden:
                tip += f"\n* scored anyway (refusal overridden): {entry.refusal}"
        colour = QColor(STATUS_COLOURS[entry.status]) if entry.status in _COLOURED else None
        role = Qt.ItemDataRole
        # One setData call per cell and role set (each is a Python->Qt call on the GUI thread).
        name.setData(status_icon(entry.status), role.DecorationRole)
        name.setData(tip, role.ToolTipRole)
        result.setData(entry.result_text, role.DisplayRole)
        result.setData(tip, role.ToolTipRole)
        result.setData(colour, role.ForegroundRole)

    def set_positive_label(self, label: str) -> None:
        self._positive_label = label

    def paths(self) -> list[Path]:
        return [e.path for e in self._entries]

    def entry(self, row: int) -> FileEntry:
        return self._entries[row]

    def row_of(self, path: Path | str) -> int:
        return self._rows.get(path_key(path), -1)

    def _store(self, row: int, entry: FileEntry) -> None:
        self._entries[row] = entry
        self._fill(self.item(row, 0), self.item(row, 1), entry)

    def _update(self, path: Path | str, **changes: Any) -> int:
        row = self.row_of(path)
        if row >= 0:
            entry = replace(self._entries[row], **changes)
            if entry != self._entries[row]:  # rows already showing this result cost nothing
                self._store(row, entry)
        return row

    def set_result(self, path: Path | str, probability: float, label: str, overridden_reason: str = "") -> int:
        """A scored image; `overridden_reason` is set when it was scored although it would be refused."""
        status = RowStatus.POSITIVE if label == self._positive_label else RowStatus.NORMAL
        return self._update(path, status=status, probability=probability, label=label, error="",
                            refusal=overridden_reason, overridden=bool(overridden_reason))

    def set_refused(self, path: Path | str, reason: str) -> int:
        return self._update(path, status=RowStatus.REFUSED, refusal=reason, probability=None, label="", error="",
                            overridden=False)

    def set_error(self, path: Path | str, message: str) -> int:
        return self._update(path, status=RowStatus.ERROR, error=message, probability=None, label="")

    def set_results(self, results: list[tuple]) -> None:
        """Apply many (path, probability, label, error[, refusal_reason]) results.

        A refusal reason without a probability is a refused row; with one, an overridden refusal."""
        for path, probability, label, error, *rest in results:
            reason = rest[0] if rest else ""
            if error:
                self.set_error(path, error)
            elif probability is not None:
                self.set_result(path, probability, label, reason)
            elif reason:
                self.set_refused(path, reason)

    def set_working(self, path: Path | str) -> int:
        row = self.row_of(path)
        if row >= 0 and self._entries[row].status is RowStatus.QUEUED:
            return self._update(path, status=RowStatus.WORKING)
        return row

    def reset_working(self) -> None:
        for entry in self._entries:
            if entry.status is RowStatus.WORKING:
                self._update(entry.path, status=RowStatus.QUEUED)

    def counts(self) -> dict[RowStatus, int]:
        result = {status: 0 for status in RowStatus}
        for entry in self._entries:
            result[entry.status] += 1
        return result


class FileListView(QTableView):
    """Compact, keyboard-friendly list; the current row drives what the main view shows."""

    currentPathChanged = Signal(object)  # Path

    def __init__(self, model: FileListModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setModel(model)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setShowGrid(False)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(24)
        header = self.horizontalHeader()
        header.setSectionResizeMode(FileListModel.COLUMN_NAME, QHeaderView.ResizeMode.Stretch)
        # A fixed width, not ResizeToContents: that re-measures every row on each update, which
        # made a 500-row batch stall the event loop for seconds.
        header.setSectionResizeMode(FileListModel.COLUMN_RESULT, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(FileListModel.COLUMN_RESULT, self.fontMetrics().horizontalAdvance("0.000  PNEUMONIA") + 16)
        header.setHighlightSections(False)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.selectionModel().currentRowChanged.connect(self._on_current_row_changed)

    def file_model(self) -> FileListModel:
        model = self.model()
        assert isinstance(model, FileListModel)
        return model

    def select_row(self, row: int) -> None:
        if 0 <= row < self.file_model().rowCount():
            self.setCurrentIndex(self.file_model().index(row, 0))

    def current_path(self) -> Path | None:
        index = self.currentIndex()
        if not index.isValid():
            return None
        return self.file_model().entry(index.row()).path

    def _on_current_row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        # Only emits a request; the main window hands it to the non-blocking requester.
        if current.isValid():
            emit(self.currentPathChanged, self.file_model().entry(current.row()).path)
