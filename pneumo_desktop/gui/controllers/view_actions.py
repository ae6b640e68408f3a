"""View ▸ Fit, Actual Size, Zoom, Invert, Reset Window/Level, Rotate, Flip, Full Screen, Next/Previous Image,
Show Overlay, Side by Side; Help ▸ Keyboard Shortcuts. None of them changes what the model reads."""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDialog, QMessageBox

from ..icons import glyph
from ..options import OverlayOptions, WindowLevel
from .display import DisplayController
from .host import WindowHost, html_escape, make_action


class ViewActions(QObject):
    def __init__(self, host: WindowHost, display: DisplayController) -> None:
        parent = host.widget()
        super().__init__(parent)
        self.host = host
        self.display = display
        view, file_list = host.view, host.file_list
        self.act_fit = make_action(
            parent, "&Fit to Window", view.fit, "Ctrl+0", glyph("fit"), tip="Fit the image to the window"
        )
        self.act_actual = make_action(
            parent, "&Actual Size (1:1)", view.actual_size, "Ctrl+1", glyph("one_to_one"),
            tip="One image pixel per screen pixel",
        )
        self.act_zoom_in = make_action(parent, "Zoom &In", lambda: view.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn)
        # Ctrl+= as well: on most keyboards "+" needs Shift, and "=" is the key people press.
        self.act_zoom_in.setShortcuts(
            [QKeySequence(QKeySequence.StandardKey.ZoomIn), QKeySequence("Ctrl+="), QKeySequence("Ctrl++")]
        )
        self.act_next = make_action(
            parent, "&Next Image", lambda: file_list.step(1), "N", tip="Next image in the list (from anywhere)"
        )
        self.act_next.setShortcuts([QKeySequence("N"), QKeySequence("Ctrl+Down")])
        self.act_previous = make_action(
            parent, "&Previous Image", lambda: file_list.step(-1), "P", tip="Previous image in the list (from anywhere)"
        )
        self.act_previous.setShortcuts([QKeySequence("P"), QKeySequence("Ctrl+Up")])
        self.act_rotate = make_action(
            parent, "&Rotate 90° Clockwise", lambda: display.orient(1, False), "Ctrl+]",
            tip="Rotate the display (the model is not affected)",
        )
        self.act_rotate_back = make_action(
            parent, "Rotate 90° &Anticlockwise", lambda: display.orient(-1, False), "Ctrl+["
        )
        self.act_flip = make_action(
            parent, "&Flip Horizontally", lambda: display.orient(0, True), "Ctrl+Shift+H",
            tip="Mirror the display (the model is not affected)",
        )
        self.act_full_screen = make_action(
            parent, "F&ull Screen", self._on_full_screen, QKeySequence.StandardKey.FullScreen, checkable=True
        )
        self.act_full_screen.setShortcuts([QKeySequence("F11"), QKeySequence(QKeySequence.StandardKey.FullScreen)])
        self.act_shortcuts = make_action(parent, "&Keyboard Shortcuts", self.show_shortcuts, "F1")
        self.act_zoom_out = make_action(
            parent, "Zoom &Out", lambda: view.zoom_by(0.8), QKeySequence.StandardKey.ZoomOut
        )
        self.act_invert = make_action(
            parent, "&Invert", host.display_controls.invert_box.setChecked, "Ctrl+I", glyph("invert"),
            checkable=True, tip="Invert the display (the model is not affected)",
        )
        self.act_reset_wl = make_action(parent, "&Reset Window/Level", host.display_controls.reset, "Ctrl+R")
        self.act_overlay = make_action(
            parent, "Show &Overlay", host.overlay_controls.enabled_box.setChecked, "O", glyph("overlay"),
            checkable=True, tip="Show or hide the Grad-CAM overlay",
        )
        self.act_side = make_action(
            parent, "&Side by Side", host.overlay_controls.side_by_side_box.setChecked, "S", glyph("side_by_side"),
            checkable=True, tip="Original and overlay side by side",
        )
        for action, text in ((self.act_fit, "Fit"), (self.act_actual, "1:1"), (self.act_invert, "Invert"),
                             (self.act_overlay, "Overlay"), (self.act_side, "Side by side")):
            action.setIconText(text)
        options = host.overlay_controls.options()
        self.act_overlay.setChecked(options.enabled)
        self.act_side.setChecked(options.side_by_side)
        # The menu's check marks follow the panel's check boxes (and the other way round, through the slots above).
        host.overlay_controls.changed.connect(self._on_overlay_changed)
        host.display_controls.changed.connect(self._on_window_level_changed)
        # Side by side: two linked views (same zoom and region).
        view.zoomChanged.connect(lambda z: host.zoom_label.setText(f"Zoom {z * 100:.0f}%" if view.has_image else ""))
        view.viewChanged.connect(lambda: host.view2.copy_view_of(view) if host.view2.isVisible() else None)
        host.view2.viewChanged.connect(lambda: view.copy_view_of(host.view2) if host.view2.isVisible() else None)

    def update_actions(self) -> None:
        has_image = self.display.state.image is not None
        for action in (self.act_fit, self.act_actual, self.act_zoom_in, self.act_zoom_out,
                       self.act_rotate, self.act_rotate_back, self.act_flip):
            action.setEnabled(has_image)
        has_rows = self.host.file_model.rowCount() > 0
        self.act_next.setEnabled(has_rows)
        self.act_previous.setEnabled(has_rows)

    @Slot(object)
    def _on_overlay_changed(self, options: OverlayOptions) -> None:
        for action, value in ((self.act_overlay, options.enabled), (self.act_side, options.side_by_side)):
            action.blockSignals(True)
            action.setChecked(value)
            action.blockSignals(False)

    @Slot(object)
    def _on_window_level_changed(self, window: WindowLevel) -> None:
        self.act_invert.blockSignals(True)
        self.act_invert.setChecked(window.invert)
        self.act_invert.blockSignals(False)

    def _on_full_screen(self, checked: bool) -> None:
        window = self.host.widget()
        window.showFullScreen() if checked else window.showNormal()

    def shortcut_rows(self) -> list[tuple[str, str]]:
        """(action, keys) for every action with a shortcut, as the Help list shows them."""
        rows = []
        for action in self.host.widget().findChildren(QAction):
            keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts())
            if keys:
                rows.append((action.text().replace("&", "").rstrip("…"), keys))
        rows += [
            ("Window/level", "right-button drag on the image"),
            ("Zoom", "mouse wheel"),
            ("Pan", "left-button drag"),
        ]
        return sorted(set(rows))

    def show_shortcuts(self) -> QDialog:
        rows = "".join(
            f"<tr><td>{html_escape(name)}&nbsp;&nbsp;</td><td><b>{html_escape(keys)}</b></td></tr>"
            for name, keys in self.shortcut_rows()
        )
        box = QMessageBox(
            QMessageBox.Icon.NoIcon, "Keyboard Shortcuts", f"<table>{rows}</table>", QMessageBox.StandardButton.Ok,
            self.host.widget(),
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return self.host.keep(box)
