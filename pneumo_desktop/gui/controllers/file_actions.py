"""File ▸ Open Images…, Open Folder…, Include Subfolders, Open Recent, Open Model Folder…; Help ▸ Open Sample
X-rays; files dropped on the window; the session (what was open when the window last closed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QFileDialog, QMenu, QStyle

from ...core.imaging import find_images
from ...core.resources import samples_dir
from ..file_list import path_key, split_images
from ..model_loading import ModelLoader, default_model_loader
from .display import DisplayController
from .host import WindowHost, make_action

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.dcm *.dicom);;All files (*)"


class FileActions(QObject):
    listReplaced = Signal()  # the file list now holds other files (not emitted when files are added)

    def __init__(self, host: WindowHost, display: DisplayController, load_model: Callable[[ModelLoader], None]) -> None:
        parent = host.widget()
        super().__init__(parent)
        self.host = host
        self.display = display
        self._load_model = load_model
        self.inputs: list[Path] = []  # what was opened (files and folders), for the session
        std = parent.style().standardIcon
        sp = QStyle.StandardPixmap
        self.act_open = make_action(
            parent, "&Open Images…", self.choose_files, QKeySequence.StandardKey.Open, std(sp.SP_DialogOpenButton),
            tip="Open one or more X-ray images",
        )
        self.act_open_folder = make_action(
            parent, "Open &Folder…", self.choose_folder, "Ctrl+Shift+O", std(sp.SP_DirOpenIcon),
            tip="Open every image in a folder",
        )
        self.act_open_model = make_action(
            parent, "Open &Model Folder…", self.choose_model_folder, tip="Load a different exported model folder"
        )
        self.act_recursive = make_action(
            parent, "Include &Subfolders", host.settings.set_include_subfolders, checkable=True,
            tip="Folders are opened and scored with their subfolders (e.g. test/NORMAL, test/PNEUMONIA)",
        )
        self.act_recursive.setChecked(host.settings.include_subfolders())
        self.act_samples = make_action(
            parent, "Open &Sample X-rays", self.open_samples, tip="The sample chest X-rays that come with the app"
        )
        self.act_open.setIconText("Open")
        self.act_open_folder.setIconText("Folder")
        self.recent_menu = QMenu("Open &Recent", parent)
        self.recent_menu.aboutToShow.connect(self.fill_recent_menu)
        self.fill_recent_menu()
        host.view.empty_button.clicked.connect(self.open_samples)
        host.view.show_empty_button(samples_dir().is_dir())

    @property
    def recursive(self) -> bool:
        return self.act_recursive.isChecked()

    def open_paths(self, paths: Sequence[Path | str], exclude: Sequence[Path] = (), *, add: bool = False) -> int:
        """Open files and/or folders (menus, drops, recent files, command line). Returns the rows listed.

        `add` appends to the list (drops) instead of replacing it. Folders include their subfolders
        when File ▸ Include Subfolders is on (the default). Files that are not images are counted
        under the list, never listed.
        """
        host = self.host
        inputs = [Path(p) for p in paths]
        if not inputs:
            return 0
        missing = [p for p in inputs if not p.exists()]
        excluded = {path_key(p) for p in exclude}
        recursive = self.recursive
        try:
            found = find_images([p for p in inputs if p.exists()], recursive=recursive)
            found = [f for f in found if path_key(f) not in excluded] if excluded else found
            files, others = split_images(found)
        except OSError as exc:
            host.message("warning", "Cannot open", f"Could not list {', '.join(map(str, inputs))}: {exc}")
            return 0
        roots = [p for p in inputs if p.is_dir()]
        if add and host.file_model.rowCount():
            added = host.file_model.add_paths(files, roots)
            host.file_model.other_files.extend(others)
            self.inputs.extend(inputs)
        else:
            self.display.forget()
            self.listReplaced.emit()
            host.file_model.set_paths(files, roots)
            host.file_model.other_files = list(others)
            self.inputs = list(inputs)
            added = files
        for path in inputs:
            if path.exists():
                host.settings.add_recent(path)
        first = inputs[0]
        host.settings.set_last_folder(first if first.is_dir() else first.parent)
        self._update_file_header()
        host.view.show_empty_button(False)
        if missing:
            host.statusBar().showMessage(f"Not found: {', '.join(str(p) for p in missing)}", 8000)
        if added:
            if add and host.file_list.current_path() is not None:
                host.file_list.select_path(added[0])
            else:
                host.file_list.select_row(0)
            host.file_list.setFocus()
            where = inputs[0] if len(inputs) == 1 else f"{len(inputs)} locations"
            if not missing:
                host.statusBar().showMessage(f"Opened {len(added)} image(s) from {where}", 5000)
        elif not add:
            host.view.clear(_nothing_found_text(inputs, others, recursive))
            host.prediction_panel.clear("No image")
        host.update_actions()
        return len(added)

    def open_samples(self) -> int:
        """Open the sample X-rays that ship with the app (one click from the empty window)."""
        folder = samples_dir()
        if not folder.is_dir():
            self.host.message("warning", "No samples", f"The sample folder is missing: {folder}")
            return 0
        return self.open_paths([folder])

    def restore_session(self) -> int:
        """Open what was open when the window last closed (only what still exists)."""
        inputs, current = self.host.settings.session()
        inputs = [p for p in inputs if p.exists()]
        if not inputs:
            return 0
        rows = self.open_paths(inputs)
        if current is not None:
            self.host.file_list.select_path(current)
        return rows

    def save_session(self) -> None:
        self.host.settings.set_session(self.inputs, self.host.file_list.current_path())

    def choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self.host.widget(), "Open Images", str(self.host.start_folder()), IMAGE_FILTER
        )
        if files:
            self.open_paths([Path(f) for f in files])

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.host.widget(), "Open Folder", str(self.host.start_folder()))
        if folder:
            self.open_paths([Path(folder)])

    def choose_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self.host.widget(), "Open Model Folder", str(self.host.start_folder())
        )
        if folder:
            self._load_model(default_model_loader(Path(folder)))

    def fill_recent_menu(self) -> None:
        menu = self.recent_menu
        menu.clear()
        recent = self.host.settings.recent_paths()
        for index, path in enumerate(recent, start=1):
            label = f"&{index % 10}  {path.name or path}" + ("/" if path.is_dir() else "")
            action = menu.addAction(label)
            action.setToolTip(str(path))
            action.setStatusTip(str(path))
            action.setEnabled(path.exists())
            action.triggered.connect(lambda _checked=False, p=path: self.open_paths([p]))
        if recent:
            menu.addSeparator()
            menu.addAction("Clear Recent", self.host.settings.clear_recent)
        else:
            menu.addAction("No recent files").setEnabled(False)

    def _update_file_header(self) -> None:
        host = self.host
        n = host.file_model.rowCount()
        host.file_header.setText(f"Images ({n})" if n else "Images")
        others = host.file_model.other_files
        host.other_files_label.setVisible(bool(others))
        if others:
            host.other_files_label.setText(f"{len(others)} other file(s) are not images and are not listed")
            host.other_files_label.setToolTip(
                "\n".join(str(p) for p in others[:40]) + ("\n…" if len(others) > 40 else "")
            )


def _nothing_found_text(inputs: list[Path], others: list[Path], recursive: bool) -> str:
    names = ", ".join(p.name for p in inputs)
    text = f"No images in {names}"
    if others:
        text += f" ({len(others)} other file(s), not images)"
    has_subfolders = any(
        p.is_dir() and any(c.is_dir() and not c.name.startswith(".") for c in p.iterdir()) for p in inputs
    )
    if has_subfolders and not recursive:
        text += ".\n\nThe images may be in its subfolders: turn on File ▸ Include Subfolders and open it again."
    return text
