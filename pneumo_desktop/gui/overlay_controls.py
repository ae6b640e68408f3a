"""Grad-CAM overlay controls (on/off, opacity, colormap, cut-off, side by side, colour bar) and
display controls (window/level, invert). Both only emit option values; nothing here touches
the model."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from ..core.overlay import COLORMAPS, colorbar
from .image_view import array_to_qimage
from .options import OverlayOptions, WindowLevel

MAX_CUTOFF = 95  # percent; 100 would hide the whole map


def _slider(minimum: int, maximum: int, value: int) -> QSlider:
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(minimum, maximum)
    slider.setValue(value)
    slider.setSingleStep(1)
    slider.setPageStep(10)
    # Focus by Tab only: a mouse drag leaves the keyboard with the file list (arrow keys keep moving through it).
    slider.setFocusPolicy(Qt.FocusPolicy.TabFocus)
    return slider


def _slider_grid(rows: list[tuple[str, QWidget, QLabel]]) -> QGridLayout:
    """Rows of name | slider (stretching) | value."""
    grid = QGridLayout()
    grid.setColumnStretch(1, 1)
    for row, (name, slider, value) in enumerate(rows):
        grid.addWidget(QLabel(name), row, 0)
        grid.addWidget(slider, row, 1)
        grid.addWidget(value, row, 2)
    return grid


def _small(label: QLabel) -> QLabel:
    font = QFont(label.font())
    font.setPointSize(max(font.pointSize() - 1, 7))
    label.setFont(font)
    return label


class OverlayControls(QGroupBox):
    changed = Signal(object)  # OverlayOptions

    def __init__(self, options: OverlayOptions | None = None, parent: QWidget | None = None) -> None:
        super().__init__("Grad-CAM overlay", parent)
        self.setObjectName("overlayControls")
        self._updating = False

        self.enabled_box = QCheckBox("Show overlay")
        self.side_by_side_box = QCheckBox("Side by side (original | overlay)")
        self.opacity_slider = _slider(0, 100, 45)
        self.opacity_slider.setObjectName("opacitySlider")
        self.opacity_value = QLabel()
        self.cutoff_slider = _slider(0, MAX_CUTOFF, 0)
        self.cutoff_slider.setObjectName("cutoffSlider")
        self.cutoff_value = QLabel()
        self.colormap_combo = QComboBox()
        self.colormap_combo.setObjectName("colormapCombo")
        self.colormap_combo.addItems(list(COLORMAPS))
        for value_label in (self.opacity_value, self.cutoff_value):
            value_label.setMinimumWidth(36)
            value_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

        self.colorbar_label = QLabel()
        self.colorbar_label.setObjectName("colorbar")
        self.colorbar_label.setFixedHeight(14)
        self.colorbar_label.setScaledContents(True)
        # Ignored: the 256 px bar must not dictate the panel's minimum width.
        self.colorbar_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.colorbar_label.setMinimumWidth(60)
        bar_ends = QHBoxLayout()
        bar_ends.addWidget(_small(QLabel("weak")))
        bar_ends.addStretch(1)
        bar_ends.addWidget(_small(QLabel("strong evidence for pneumonia")))

        grid = _slider_grid([("Opacity", self.opacity_slider, self.opacity_value),
                             ("Cut-off", self.cutoff_slider, self.cutoff_value)])
        grid.addWidget(QLabel("Colours"), 2, 0)
        grid.addWidget(self.colormap_combo, 2, 1, 1, 2)

        note = _small(
            QLabel("Highlights the regions that most influenced the model's output. It is not a map of lesions.")
        )
        note.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(self.enabled_box)
        layout.addLayout(grid)
        layout.addWidget(self.colorbar_label)
        layout.addLayout(bar_ends)
        layout.addWidget(self.side_by_side_box)
        self.meaning = _small(QLabel())
        self.meaning.setObjectName("overlayMeaning")
        self.meaning.setWordWrap(True)
        self.meaning.setVisible(False)
        layout.addWidget(self.meaning)
        layout.addWidget(note)

        self.set_options(options or OverlayOptions())
        self.enabled_box.toggled.connect(self._emit)
        self.side_by_side_box.toggled.connect(self._emit)
        self.opacity_slider.valueChanged.connect(self._emit)
        self.cutoff_slider.valueChanged.connect(self._emit)
        self.colormap_combo.currentTextChanged.connect(self._emit)

    def set_meaning(self, text: str) -> None:
        """What the colours mean for the result on screen (empty: hidden)."""
        self.meaning.setText(text)
        self.meaning.setVisible(bool(text))

    def options(self) -> OverlayOptions:
        return OverlayOptions(
            enabled=self.enabled_box.isChecked(),
            opacity=self.opacity_slider.value() / 100.0,
            colormap=self.colormap_combo.currentText(),
            cutoff=self.cutoff_slider.value() / 100.0,
            side_by_side=self.side_by_side_box.isChecked(),
        )

    def set_options(self, options: OverlayOptions) -> None:
        self._updating = True
        try:
            self.enabled_box.setChecked(options.enabled)
            self.side_by_side_box.setChecked(options.side_by_side)
            self.opacity_slider.setValue(round(options.opacity * 100))
            self.cutoff_slider.setValue(min(round(options.cutoff * 100), MAX_CUTOFF))
            colormap = options.colormap if options.colormap in COLORMAPS else next(iter(COLORMAPS))
            self.colormap_combo.setCurrentText(colormap)
        finally:
            self._updating = False
        self._refresh()

    def _refresh(self) -> None:
        options = self.options()
        self.opacity_value.setText(f"{round(options.opacity * 100)}%")
        self.cutoff_value.setText(f"{options.cutoff:.2f}")
        for widget in (self.opacity_slider, self.cutoff_slider, self.colormap_combo, self.side_by_side_box):
            widget.setEnabled(options.enabled)
        bar = colorbar(options.colormap, length=256, thickness=12, vertical=False)
        self.colorbar_label.setPixmap(_to_pixmap(bar))

    def _emit(self, *_args: object) -> None:
        if self._updating:
            return
        self._refresh()
        self.changed.emit(self.options())


def _to_pixmap(rgb: np.ndarray) -> QPixmap:
    return QPixmap.fromImage(array_to_qimage(rgb))


class DisplayControls(QGroupBox):
    """Window/level (in the image's own units: grey values, or DICOM modality values) and invert: display only."""

    changed = Signal(object)  # WindowLevel

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Display", parent)
        self.setObjectName("displayControls")
        self._updating = False
        self._default = WindowLevel()
        self._presets: list[tuple[str, WindowLevel]] = []
        self.level_slider = _slider(0, 255, 128)
        self.level_slider.setObjectName("levelSlider")
        self.width_slider = _slider(2, 256, 256)
        self.width_slider.setObjectName("widthSlider")
        self.level_value = QLabel()
        self.width_value = QLabel()
        for value_label in (self.level_value, self.width_value):
            value_label.setMinimumWidth(44)
            value_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("windowPresets")
        self.preset_combo.setToolTip("Windows stored in the file, and its full data range")
        # Long preset names must not widen the side panel.
        self.preset_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.preset_combo.setMinimumContentsLength(12)
        self.invert_box = QCheckBox("Invert")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip(
            "The image's own window (for DICOM: the first one stored in the file), not inverted"
        )

        grid = _slider_grid([("Level", self.level_slider, self.level_value),
                             ("Window", self.width_slider, self.width_value)])
        self.preset_label = QLabel("Preset")
        grid.addWidget(self.preset_label, 2, 0)
        grid.addWidget(self.preset_combo, 2, 1, 1, 2)
        row = QHBoxLayout()
        row.addWidget(self.invert_box)
        row.addStretch(1)
        row.addWidget(self.reset_button)
        self.note = _small(QLabel())
        self.note.setObjectName("modelInputNote")
        self.note.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addLayout(row)
        layout.addWidget(self.note)
        self.set_source(0, 255, WindowLevel(), [], "")

        self.level_slider.valueChanged.connect(self._emit)
        self.width_slider.valueChanged.connect(self._emit)
        self.invert_box.toggled.connect(self._emit)
        self.reset_button.clicked.connect(self.reset)
        self.preset_combo.activated.connect(self._on_preset)

    def set_source(
        self, low: int, high: int, default: WindowLevel, presets: list[tuple[str, WindowLevel]], model_note: str
    ) -> None:
        """The value range of the image on screen (sliders span it), its default window and presets."""
        self._default = default
        self._presets = presets
        self._updating = True
        try:
            span = max(high - low + 1, 2)
            self.level_slider.setRange(low, max(high, low + 1))
            self.width_slider.setRange(2, max(span * 2, 256 if span <= 256 else span))
            step = max(span // 100, 1)
            for slider in (self.level_slider, self.width_slider):
                slider.setSingleStep(step)
                slider.setPageStep(step * 10)
            self.preset_combo.clear()
            for name, _window in presets:
                self.preset_combo.addItem(name)
        finally:
            self._updating = False
        for widget in (self.preset_combo, self.preset_label):
            widget.setVisible(bool(presets))
        only_display = "Window/level changes the display only; the model input never changes."
        self.note.setText(f"{model_note} {only_display}" if model_note else only_display)

    def window_level(self) -> WindowLevel:
        return WindowLevel(self.level_slider.value(), self.width_slider.value(), self.invert_box.isChecked())

    def set_window_level(self, window: WindowLevel) -> None:
        self._updating = True
        try:
            self.level_slider.setValue(window.level)
            self.width_slider.setValue(window.width)
            self.invert_box.setChecked(window.invert)
        finally:
            self._updating = False
        self._refresh()
        self.changed.emit(self.window_level())

    def adjust(self, d_level: int, d_width: int) -> None:
        """Nudge level and width (mouse drag on the image)."""
        current = self.window_level()
        self.set_window_level(WindowLevel(current.level + d_level, max(current.width + d_width, 2), current.invert))

    def value_step(self) -> int:
        return self.level_slider.singleStep()

    def reset(self) -> None:
        self.set_window_level(self._default)

    def _on_preset(self, index: int) -> None:
        if 0 <= index < len(self._presets):
            preset = self._presets[index][1]
            self.set_window_level(WindowLevel(preset.level, preset.width, self.invert_box.isChecked()))

    def _refresh(self) -> None:
        self.level_value.setText(str(self.level_slider.value()))
        self.width_value.setText(str(self.width_slider.value()))

    def _emit(self, *_args: object) -> None:
        if self._updating:
            return
        self._refresh()
        self.changed.emit(self.window_level())
