"""Persistent user preferences (QSettings): last folder, recent files, overlay choices, geometry."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from .options import DEFAULT_COLORMAP, OverlayOptions

log = logging.getLogger(__name__)

ORGANIZATION = "PneumoDesktop"
APPLICATION = "Pneumo Desktop"
MAX_RECENT = 10

_RECENT = "recent/paths"
_LAST_FOLDER = "paths/last_folder"
_GEOMETRY = "window/geometry"
_STATE = "window/state"
_SPLITTER = "window/splitter"
_OVERLAY = "overlay/"
_SUBFOLDERS = "paths/include_subfolders"
_SESSION_INPUTS = "session/inputs"
_SESSION_CURRENT = "session/current"


def default_qsettings() -> QSettings:
    return QSettings(ORGANIZATION, APPLICATION)


def ini_qsettings(path: Path) -> QSettings:
    """An ini-file store (tests, portable installs)."""
    return QSettings(str(path), QSettings.Format.IniFormat)


def _as_list(value: Any) -> list[str]:
    # Ini files give back a bare string for a one-element list, and None for an empty one.
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


class SettingsStore:
    """Typed access to the QSettings keys the app uses."""

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.qsettings = qsettings if qsettings is not None else default_qsettings()

    # -- recent files and folders -------------------------------------------------------------
    def recent_paths(self) -> list[Path]:
        return [Path(p) for p in _as_list(self.qsettings.value(_RECENT))]

    def add_recent(self, path: Path) -> list[Path]:
        text = str(Path(path).absolute())
        items = [p for p in _as_list(self.qsettings.value(_RECENT)) if p != text]
        items.insert(0, text)
        del items[MAX_RECENT:]
        self.qsettings.setValue(_RECENT, items)
        return [Path(p) for p in items]

    def clear_recent(self) -> None:
        self.qsettings.setValue(_RECENT, [])

    # -- last folder ----------------------------------------------------------------------------
    def last_folder(self) -> Path | None:
        value = self.qsettings.value(_LAST_FOLDER)
        return Path(str(value)) if value else None

    def set_last_folder(self, folder: Path) -> None:
        self.qsettings.setValue(_LAST_FOLDER, str(Path(folder).absolute()))

    # -- overlay choices ------------------------------------------------------------------------
    def overlay_options(self) -> OverlayOptions:
        s = self.qsettings
        default = OverlayOptions()
        try:
            return OverlayOptions(
                enabled=bool(s.value(_OVERLAY + "enabled", default.enabled, type=bool)),
                opacity=min(max(float(s.value(_OVERLAY + "opacity", default.opacity)), 0.0), 1.0),  # type: ignore[arg-type]  # QSettings.value is typed object; bad values raise, caught below
                colormap=str(s.value(_OVERLAY + "colormap", DEFAULT_COLORMAP)),
                cutoff=min(max(float(s.value(_OVERLAY + "cutoff", default.cutoff)), 0.0), 0.95),  # type: ignore[arg-type]  # QSettings.value is typed object; bad values raise, caught below
                side_by_side=bool(s.value(_OVERLAY + "side_by_side", default.side_by_side, type=bool)),
            )
        except (TypeError, ValueError):
            log.warning("ignoring unreadable overlay settings")
            return default

    def set_overlay_options(self, options: OverlayOptions) -> None:
        for key, value in asdict(options).items():
            self.qsettings.setValue(_OVERLAY + key, value)

    # -- window geometry ------------------------------------------------------------------------
    def geometry(self) -> QByteArray | None:
        value = self.qsettings.value(_GEOMETRY)
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        value = self.qsettings.value(_STATE)
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def splitter_state(self) -> QByteArray | None:
        value = self.qsettings.value(_SPLITTER)
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def save_window(self, geometry: QByteArray, state: QByteArray, splitter: QByteArray) -> None:
        self.qsettings.setValue(_GEOMETRY, geometry)
        self.qsettings.setValue(_STATE, state)
        self.qsettings.setValue(_SPLITTER, splitter)

    def sync(self) -> None:
        self.qsettings.sync()

    # -- folders and the last session -----------------------------------------------------------
    def include_subfolders(self) -> bool:
        """Folders are searched with their subfolders (the usual test/NORMAL, test/PNEUMONIA layout); on by default."""
        return bool(self.qsettings.value(_SUBFOLDERS, True, type=bool))

    def set_include_subfolders(self, value: bool) -> None:
        self.qsettings.setValue(_SUBFOLDERS, bool(value))

    def session(self) -> tuple[list[Path], Path | None]:
        """What was open when the window last closed: the opened files/folders and the current image."""
        inputs = [Path(p) for p in _as_list(self.qsettings.value(_SESSION_INPUTS))]
        current = self.qsettings.value(_SESSION_CURRENT)
        return inputs, (Path(str(current)) if current else None)

    def set_session(self, inputs: list[Path], current: Path | None) -> None:
        self.qsettings.setValue(_SESSION_INPUTS, [str(Path(p).absolute()) for p in inputs])
        self.qsettings.setValue(_SESSION_CURRENT, str(current.absolute()) if current else "")
