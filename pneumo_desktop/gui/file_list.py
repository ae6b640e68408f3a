"""The left-hand list of opened images and their status (queued, scored, or the error)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from .icons import STATUS_COLOURS, RowStatus, status_icon
from .qt_compat import emit

Index = QModelIndex | QPersistentModelIndex


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

    @property
    def result_text(self) -> str:
        if self.status is RowStatus.ERROR:
            return f"Error: {self.error}"
        if self.status is RowStatus.WORKING:
            return "scoring…"
        if self.probability is not None:
            return f"{format_probability(self.probability)}  {self.label}"
        return "queued"


class FileListModel(QAbstractTableModel):
    """Two columns: file name (with a status icon) and result."""

    COLUMN_NAME = 0
    COLUMN_RESULT = 1
    HEADERS = ("Image", "Result")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._entries: list[FileEntry] = []
        self._rows: dict[str, int] = {}
        self._positive_label = "PNEUMONIA"

    # -- Qt model API ---------------------------------------------------------------------------
    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt signature
        return 0 if parent.isValid() else len(self._entries)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else 2

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        entry = self._entries[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return entry.path.name if column == self.COLUMN_NAME else entry.result_text
        if role == Qt.ItemDataRole.DecorationRole and column == self.COLUMN_NAME:
            return status_icon(entry.status)
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = str(entry.path)
            if entry.status is RowStatus.ERROR:
                tip += f"\n\nCould not be read: {entry.error}"
            elif entry.probability is not None:
                tip += f"\n\nModel output P(pneumonia) = {format_probability(entry.probability)} ({entry.label})"
            return tip
        if role == Qt.ItemDataRole.ForegroundRole and column == self.COLUMN_RESULT:
            if entry.status in (RowStatus.ERROR, RowStatus.POSITIVE, RowStatus.NORMAL):
                return QColor(STATUS_COLOURS[entry.status])
        if role == Qt.ItemDataRole.UserRole:
            return entry
        return None

    # -- content --------------------------------------------------------------------------------
    def set_paths(self, paths: list[Path]) -> None:
        self.beginResetModel()
        self._entries = [FileEntry(Path(p)) for p in paths]
        self._rows = {path_key(e.path): i for i, e in enumerate(self._entries)}
        self.endResetModel()

    def add_paths(self, paths: list[Path]) -> None:
        new = [Path(p) for p in paths if path_key(p) not in self._rows]
        if not new:
            return
        first = len(self._entries)
        self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
        for offset, path in enumerate(new):
            self._entries.append(FileEntry(path))
            self._rows[path_key(path)] = first + offset
        self.endInsertRows()

    def set_positive_label(self, label: str) -> None:
        self._positive_label = label

    def paths(self) -> list[Path]:
        return [e.path for e in self._entries]

    def entry(self, row: int) -> FileEntry:
        return self._entries[row]

    def row_of(self, path: Path | str) -> int:
        return self._rows.get(path_key(path), -1)

    def _update(self, path: Path | str, **changes: Any) -> int:
        row = self.row_of(path)
        if row < 0:
            return row
        self._entries[row] = replace(self._entries[row], **changes)
        emit(self.dataChanged, self.index(row, 0), self.index(row, 1))
        return row

    def set_result(self, path: Path | str, probability: float, label: str) -> int:
        status = RowStatus.POSITIVE if label == self._positive_label else RowStatus.NORMAL
        return self._update(path, status=status, probability=probability, label=label, error="")

    def set_error(self, path: Path | str, message: str) -> int:
        return self._update(path, status=RowStatus.ERROR, error=message, probability=None, label="")

    def set_results(self, results: list[tuple[Path, float | None, str, str]]) -> None:
        """Apply many (path, probability, label, error) results with one change notification."""
        rows = []
        for path, probability, label, error in results:
            row = self.row_of(path)
            if row < 0:
                continue
            if error:
                entry = replace(self._entries[row], status=RowStatus.ERROR, error=error, probability=None, label="")
            elif probability is not None:
                status = RowStatus.POSITIVE if label == self._positive_label else RowStatus.NORMAL
                entry = replace(self._entries[row], status=status, probability=probability, label=label, error="")
            else:
                continue
            self._entries[row] = entry
            rows.append(row)
        if rows:
            emit(self.dataChanged, self.index(min(rows), 0), self.index(max(rows), 1))

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
