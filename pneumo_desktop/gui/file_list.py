"""The left-hand list of opened images and their status (not scored yet, queued, scored, or the error)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from ..core.imaging import sniff_format
from ..core.levels import LEVEL_HIGH, LEVEL_INDETERMINATE, LEVEL_LOW, LEVEL_MEANING, LEVEL_TEXT
from .icons import STATUS_COLOURS, RowStatus, status_icon

# A level's colour: low and high as the labels' (green, orange); indeterminate in a dark amber of its own.
LEVEL_COLOURS = {
    LEVEL_LOW: STATUS_COLOURS[RowStatus.NORMAL],
    LEVEL_INDETERMINATE: "#9a6700",
    LEVEL_HIGH: STATUS_COLOURS[RowStatus.POSITIVE],
}

# Files with these endings are listed without opening them (a damaged one becomes an error row);
# any other file is listed only if its first bytes are those of a supported image (DICOM often has no ending).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
SNIFF_BYTES = 132  # enough for the DICOM preamble and "DICM"
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_ROLE = Qt.ItemDataRole.UserRole + 2  # the row's RowStatus value, what the filter matches (in C++)


def path_key(path: Path | str) -> str:
    """Normalised key so paths from the list, the worker and the CSV match."""
    return os.path.normcase(os.path.abspath(os.fspath(path)))


def format_probability(probability: float) -> str:
    return f"{probability:.3f}"


def looks_like_image(path: Path) -> bool:
    """True for a file to list as an image: a known ending, or content that starts like a supported image."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return True  # unreadable: listed, so that its row says why
    if sniff_format(head) is not None:
        return True
    # DICOM without preamble starts with a group 0002 or 0008 element.
    return len(head) >= 8 and int.from_bytes(head[0:2], "little") in (0x0002, 0x0008)


def split_images(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(images, other files): other files are only counted in the window, never rows."""
    images: list[Path] = []
    others: list[Path] = []
    for path in paths:
        (images if not path.exists() or looks_like_image(path) else others).append(path)
    return images, others


@dataclass(frozen=True)
class FileEntry:
    path: Path
    status: RowStatus = RowStatus.UNSCORED
    probability: float | None = None
    label: str = ""
    error: str = ""
    refusal: str = ""  # why the model refused (or, when overridden, would have refused) this image
    overridden: bool = False
    name: str = ""  # shown name: the path below the opened folder
    level: str = ""  # levels.LEVEL_*: low / indeterminate / high ("" when the model has no levels)

    @property
    def result_text(self) -> str:
        if self.status is RowStatus.ERROR:
            return f"Error: {self.error}"
        if self.status is RowStatus.REFUSED:
            return "refused"  # the reason is in the tooltip and the result panel
        # the level first (it is the result); the label at the threshold beside it, for compatibility
        shown = f"{LEVEL_TEXT[self.level]} · {self.label}" if self.level in LEVEL_TEXT else self.label
        if self.overridden and self.probability is not None:
            return f"{shown} *"  # scored anyway: the asterisk's meaning is in the tooltip
        if self.status is RowStatus.WORKING:
            return "scoring…"
        if self.probability is not None:
            return shown
        return "not scored yet"


_COLOURED = (RowStatus.ERROR, RowStatus.POSITIVE, RowStatus.NORMAL, RowStatus.REFUSED)
_NO_P_ORDER = {RowStatus.ERROR: -3.0, RowStatus.REFUSED: -2.0}  # sort keys of rows without a P (unscored: -1)


class FileListModel(QStandardItemModel):
    """Three columns: file name (with a status icon), P(pneumonia) and result (label or error).

    A QStandardItemModel on purpose: its data lives in C++, so painting the list never calls back
    into Python. With a Python data() every repaint made hundreds of calls that each had to win
    the GIL from the batch threads, which stalled the event loop during a batch.
    """

    COLUMN_NAME = 0
    COLUMN_PROBABILITY = 1
    COLUMN_RESULT = 2
    HEADERS = ("Image", "P", "Result")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(0, len(self.HEADERS), parent)
        self.setHorizontalHeaderLabels(list(self.HEADERS))
        self.horizontalHeaderItem(self.COLUMN_PROBABILITY).setToolTip("P(pneumonia), the model's output")
        self._entries: list[FileEntry] = []
        self._rows: dict[str, int] = {}
        self._positive_label = "PNEUMONIA"
        self.other_files: list[Path] = []  # non-images found beside the images: counted, not listed
        self._queued = False  # a batch is running: unscored rows say "queued"

    # -- content --------------------------------------------------------------------------------
    def set_paths(self, paths: list[Path], roots: Iterable[Path] = ()) -> None:
        self._entries = []
        self._rows = {}
        self.beginResetModel()
        self.blockSignals(True)  # one reset instead of a signal per appended row
        try:
            self.removeRows(0, self.rowCount())
            self._append(paths, list(roots))
        finally:
            self.blockSignals(False)
        self.endResetModel()

    def add_paths(self, paths: list[Path], roots: Iterable[Path] = ()) -> list[Path]:
        """Append paths not listed yet; returns the ones added."""
        return self._append(paths, list(roots))

    def _append(self, paths: Iterable[Path], roots: list[Path]) -> list[Path]:
        added: list[Path] = []
        for path in (Path(p) for p in paths):
            key = path_key(path)
            if key in self._rows:
                continue
            entry = FileEntry(path, name=_shown_name(path, roots))
            self._rows[key] = len(self._entries)
            self._entries.append(entry)
            self.appendRow(self._make_items(entry))
            added.append(path)
        return added

    def _make_items(self, entry: FileEntry) -> list[QStandardItem]:
        items = [QStandardItem(entry.name or entry.path.name), QStandardItem(), QStandardItem()]
        for item in items:
            item.setEditable(False)
        items[0].setData((entry.name or entry.path.name).lower(), SORT_ROLE)
        items[1].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self._fill(items, entry)
        return items

    def _fill(self, items: list[QStandardItem], entry: FileEntry) -> None:
        tip = str(entry.path)
        if entry.status is RowStatus.ERROR:
            tip += f"\n\nCould not be read: {entry.error}"
        elif entry.status is RowStatus.REFUSED:
            tip += f"\n\nRefused, not scored: {entry.refusal}"
        elif entry.probability is not None:
            tip += f"\n\nModel output P(pneumonia) = {format_probability(entry.probability)} ({entry.label})"
            if entry.level in LEVEL_TEXT:
                tip += f"\nLevel: {LEVEL_TEXT[entry.level]} ({LEVEL_MEANING[entry.level]})"
            if entry.overridden:
                tip += f"\n* scored anyway (refusal overridden): {entry.refusal}"
        colour = QColor(STATUS_COLOURS[entry.status]) if entry.status in _COLOURED else None
        if entry.level in LEVEL_COLOURS and entry.status in (RowStatus.NORMAL, RowStatus.POSITIVE):
            colour = QColor(LEVEL_COLOURS[entry.level])
        role = Qt.ItemDataRole
        name, probability, result = items
        # One setData call per cell and role set (each is a Python->Qt call on the GUI thread).
        name.setData(status_icon(entry.status), role.DecorationRole)
        name.setData(entry.status.value, STATUS_ROLE)
        name.setData(tip, role.ToolTipRole)
        probability.setData(
            format_probability(entry.probability) if entry.probability is not None else "", role.DisplayRole
        )
        # Sorting by P puts rows without one first (ascending): errors, then refused, then unscored.
        sort_p = entry.probability if entry.probability is not None else _NO_P_ORDER.get(entry.status, -1.0)
        probability.setData(sort_p, SORT_ROLE)
        text = "queued" if self._queued and entry.status is RowStatus.UNSCORED else entry.result_text
        result.setData(text, role.DisplayRole)
        result.setData(text.lower(), SORT_ROLE)
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
        self._fill([self.item(row, c) for c in range(len(self.HEADERS))], entry)

    def _update(self, path: Path | str, **changes: Any) -> int:
        row = self.row_of(path)
        if row >= 0:
            entry = replace(self._entries[row], **changes)
            if entry != self._entries[row]:  # rows already showing this result cost nothing
                self._store(row, entry)
        return row

    def set_result(self, path: Path | str, probability: float, label: str, overridden_reason: str = "",
                   level: str = "") -> int:
        """A scored image; `overridden_reason` is set when it was scored although it would be refused; `level`
        is its result level (low / indeterminate / high) when the model has levels."""
        status = RowStatus.POSITIVE if label == self._positive_label else RowStatus.NORMAL
        return self._update(path, status=status, probability=probability, label=label, error="",
                            refusal=overridden_reason, overridden=bool(overridden_reason), level=level)

    def set_refused(self, path: Path | str, reason: str) -> int:
        return self._update(path, status=RowStatus.REFUSED, refusal=reason, probability=None, label="", error="",
                            overridden=False, level="")

    def set_error(self, path: Path | str, message: str) -> int:
        return self._update(path, status=RowStatus.ERROR, error=message, probability=None, label="", level="")

    def set_results(self, results: list[tuple]) -> None:
        """Apply many (path, probability, label, error[, refusal_reason[, level]]) results.

        A refusal reason without a probability is a refused row; with one, an overridden refusal."""
        for path, probability, label, error, *rest in results:
            reason = rest[0] if rest else ""
            level = rest[1] if len(rest) > 1 else ""
            if error:
                self.set_error(path, error)
            elif probability is not None:
                self.set_result(path, probability, label, reason, level)
            elif reason:
                self.set_refused(path, reason)

    def mark_queued(self, queued: bool) -> None:
        """Rows without a result say "queued" while a batch runs, "not scored yet" otherwise.

        Only the text of those rows changes (one call per row, signals batched into one dataChanged):
        a full row update each would make a 500-row batch start with a visible stall.
        """
        self._queued = queued
        text = "queued" if queued else "not scored yet"
        self.blockSignals(True)
        try:
            for row, entry in enumerate(self._entries):
                if entry.status is RowStatus.UNSCORED:
                    self.item(row, self.COLUMN_RESULT).setData(text, Qt.ItemDataRole.DisplayRole)
        finally:
            self.blockSignals(False)
        if self.rowCount():
            self.dataChanged.emit(
                self.index(0, self.COLUMN_RESULT), self.index(self.rowCount() - 1, self.COLUMN_RESULT)
            )

    def counts(self) -> dict[RowStatus, int]:
        result = {status: 0 for status in RowStatus}
        for entry in self._entries:
            result[entry.status] += 1
        return result


def _shown_name(path: Path, roots: list[Path]) -> str:
    """The path below the opened folder it came from ("NORMAL/IM-0001.jpeg"), else the file name."""
    for root in roots:
        try:
            relative = path.relative_to(root)
        except ValueError:
            continue
        if len(relative.parts) > 1:
            return relative.as_posix()
    return path.name


# Filters offered above the list: (name, statuses shown).
FILTERS: dict[str, frozenset[RowStatus] | None] = {
    "All": None,
    "Above threshold": frozenset({RowStatus.POSITIVE}),
    "Below threshold": frozenset({RowStatus.NORMAL}),
    "Errors": frozenset({RowStatus.ERROR}),
    "Refused": frozenset({RowStatus.REFUSED}),
    "Not scored": frozenset({RowStatus.UNSCORED}),
}


class FileListProxy(QSortFilterProxyModel):
    """Sorts by name, P or result, and filters by status, without touching the source rows.

    Sorting and filtering run in C++ (sort role, and a pattern on the status role): a Python
    filterAcceptsRow would be called for every row on every update during a batch.
    """

    def __init__(self, source: FileListModel) -> None:
        super().__init__()
        self.setSourceModel(source)
        self.setSortRole(SORT_ROLE)
        self.setFilterRole(STATUS_ROLE)
        self.setFilterKeyColumn(FileListModel.COLUMN_NAME)

    def set_filter(self, name: str) -> None:
        shown = FILTERS.get(name)
        pattern = "" if shown is None else "^(" + "|".join(sorted(status.value for status in shown)) + ")$"
        self.setFilterRegularExpression(pattern)


class FileListView(QTableView):
    """Compact, keyboard-friendly, sortable list; the current row drives what the main view shows."""

    currentPathChanged = Signal(object)  # Path

    def __init__(self, model: FileListModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._source = model
        self.proxy = FileListProxy(model)
        self.setModel(self.proxy)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setShowGrid(False)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        # Names of a series differ near their end ("...-0588-0001.jpeg"): keep the end visible.
        self.setTextElideMode(Qt.TextElideMode.ElideLeft)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(24)
        header = self.horizontalHeader()
        header.setSectionResizeMode(FileListModel.COLUMN_NAME, QHeaderView.ResizeMode.Stretch)
        # Fixed widths, not ResizeToContents: that re-measures every row on each update, which
        # made a 500-row batch stall the event loop for seconds.
        metrics = self.fontMetrics()
        for column, sample in (
            (FileListModel.COLUMN_PROBABILITY, "0.000 ▼"),
            (FileListModel.COLUMN_RESULT, "PNEUMONIA ▼"),
        ):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Fixed)
            header.resizeSection(column, metrics.horizontalAdvance(sample) + 16)
        header.setHighlightSections(False)
        self.setSortingEnabled(True)
        self.sortByColumn(FileListModel.COLUMN_NAME, Qt.SortOrder.AscendingOrder)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.selectionModel().currentRowChanged.connect(self._on_current_row_changed)

    def file_model(self) -> FileListModel:
        return self._source

    def select_row(self, row: int) -> None:
        """Select the row'th row as the list shows it (sorted and filtered)."""
        if 0 <= row < self.proxy.rowCount():
            self.setCurrentIndex(self.proxy.index(row, 0))

    def select_path(self, path: Path) -> None:
        source_row = self._source.row_of(path)
        if source_row >= 0:
            index = self.proxy.mapFromSource(self._source.index(source_row, 0))
            if index.isValid():
                self.setCurrentIndex(index)

    def step(self, delta: int) -> None:
        """Move the current row by `delta` (next/previous image), whatever has the keyboard focus."""
        rows = self.proxy.rowCount()
        if rows:
            current = self.currentIndex().row() if self.currentIndex().isValid() else -1
            self.select_row(min(max(current + delta, 0), rows - 1))

    def current_path(self) -> Path | None:
        index = self.currentIndex()
        if not index.isValid():
            return None
        return self._source.entry(self.proxy.mapToSource(index).row()).path

    def visible_paths(self) -> list[Path]:
        """Paths in the order the list shows them."""
        return [
            self._source.entry(self.proxy.mapToSource(self.proxy.index(r, 0)).row()).path
            for r in range(self.proxy.rowCount())
        ]

    def _on_current_row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        # Only emits a request; the main window hands it to the non-blocking requester.
        if current.isValid():
            self.currentPathChanged.emit(self._source.entry(self.proxy.mapToSource(current).row()).path)
