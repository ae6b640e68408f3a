"""Right-hand panel: the model's output for the image on screen, worded so it never overstates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..core.levels import LEVEL_MEANING
from .file_list import LEVEL_COLOURS, format_probability
from .icons import STATUS_COLOURS, RowStatus

if TYPE_CHECKING:
    from ..core.runtime import Prediction

PANEL_TITLE = "Model output — research use only, not a diagnosis"
REFUSED_LABEL = "NOT SCORED"
REFUSED_CAPTION = "the model does not read this image"
LABEL_CAPTION = "label at the model's operating point"
LABEL_CAPTION_WITH_LEVEL = "label at the main threshold, kept for compatibility: the level above is the result"
SUBTYPE_CAVEAT = (
    "Research use only: a secondary estimate, less validated than the main output; "
    "it does not tell bacterial from viral pneumonia in a patient."
)


class ProbabilityBar(QWidget):
    """A 0..1 bar with the operating-point threshold marked."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._probability: float | None = None
        self._threshold: float | None = None
        self._colour = QColor(STATUS_COLOURS[RowStatus.QUEUED])
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(200, 22)

    def set_values(self, probability: float | None, threshold: float | None, colour: QColor | None = None) -> None:
        self._probability = probability
        self._threshold = threshold
        if colour is not None:
            self._colour = colour
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        track = QRectF(1, 5, self.width() - 2, 12)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(self.palette().mid().color().lighter(130))
        painter.drawRoundedRect(track, 6, 6)
        if self._probability is not None:
            filled = QRectF(
                track.left(), track.top(), track.width() * max(0.0, min(1.0, self._probability)), track.height()
            )
            painter.setBrush(self._colour)
            painter.drawRoundedRect(filled, 6, 6)
        if self._threshold is not None:
            x = track.left() + track.width() * self._threshold
            painter.setPen(QPen(self.palette().text().color(), 2))
            painter.drawLine(int(x), 1, int(x), self.height() - 1)
        painter.end()


class PredictionPanel(QGroupBox):
    scoreAnywayRequested = Signal()  # the user asks to score a refused image regardless

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Result", parent)
        self.setObjectName("predictionPanel")
        # The full caveat goes in a wrapping label: as a group-box title it would set the panel width.
        self.caveat = QLabel(PANEL_TITLE)
        self.caveat.setObjectName("caveat")
        self.caveat.setWordWrap(True)
        self.caveat.setStyleSheet("color: #7a4a00;")

        self.label_value = QLabel("—")
        self.label_value.setObjectName("labelValue")
        big = QFont(self.font())
        big.setPointSize(big.pointSize() + 7)
        big.setBold(True)
        self.label_value.setFont(big)
        self._label_fonts = (big, QFont(self.font()))  # (alone, below a level)
        self._label_fonts[1].setPointSize(self._label_fonts[1].pointSize() + 1)
        self._label_fonts[1].setBold(True)
        # The level (low / indeterminate: needs a reader / high): the result, large and first, with the
        # probability smaller beside it and the figures the card (or profile) measured for that band below.
        self.level_value = QLabel("")
        self.level_value.setObjectName("levelValue")
        self.level_value.setFont(big)
        self.level_value.setWordWrap(True)
        self.level_probability = QLabel("")
        self.level_probability.setObjectName("levelProbability")
        self.level_probability.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.level_figures = QLabel("")
        self.level_figures.setObjectName("levelFigures")
        self.level_figures.setWordWrap(True)
        self.level_figures.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label_caption = QLabel(LABEL_CAPTION)
        self.label_caption.setObjectName("labelCaption")
        self.label_caption.setWordWrap(True)  # a long caption must not widen the side panel past the window

        self.probability_value = QLabel("—")
        self.probability_value.setObjectName("probabilityValue")
        mid = QFont(self.font())
        mid.setPointSize(mid.pointSize() + 2)
        self.probability_value.setFont(mid)
        self.probability_bar = ProbabilityBar()

        self.threshold_value = QLabel("—")
        self.threshold_value.setObjectName("thresholdValue")
        self.threshold_source_value = QLabel("—")  # model card or the site profile in use
        self.threshold_source_value.setObjectName("thresholdSourceValue")
        self.threshold_source_value.setWordWrap(True)
        self.model_value = QLabel("—")
        self.model_value.setObjectName("modelValue")
        self.model_value.setWordWrap(True)
        self.status_value = QLabel("No image")
        self.status_value.setObjectName("statusValue")
        self.status_value.setWordWrap(True)
        for label in (self.threshold_value, self.model_value, self.probability_value):
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.note = QLabel(
            "P(pneumonia) is the model's estimate for this image. The label only says which side "
            "of the threshold it falls on; it is not a finding."
        )
        self.note.setWordWrap(True)
        self.note.setObjectName("panelNote")
        small = QFont(self.font())
        small.setPointSize(max(small.pointSize() - 1, 7))
        self.note.setFont(small)
        self.label_caption.setFont(small)
        self.level_figures.setFont(small)
        self.level_probability.setFont(mid)

        refused_colour = STATUS_COLOURS[RowStatus.REFUSED]
        # Refusal: the reason and the way around it, both visible without hovering.
        self.refusal_value = QLabel("")
        self.refusal_value.setObjectName("refusalValue")
        self.refusal_value.setWordWrap(True)
        self.refusal_value.setStyleSheet(f"color: {refused_colour};")
        self.score_anyway_button = QPushButton("Score anyway")
        self.score_anyway_button.setObjectName("scoreAnywayButton")
        self.score_anyway_button.setToolTip(
            "Score this image although the model says it does not look like a frontal chest X-ray"
        )
        self.score_anyway_button.clicked.connect(self.scoreAnywayRequested)
        self.override_note = QLabel("")
        self.override_note.setObjectName("overrideNote")
        self.override_note.setWordWrap(True)
        self.override_note.setStyleSheet(f"color: {refused_colour}; font-weight: 600;")

        # The subtype: deliberately small and grey, below the main result, with its own caveat.
        self.subtype_value = QLabel("")
        self.subtype_value.setObjectName("subtypeValue")
        self.subtype_value.setWordWrap(True)
        self.subtype_value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.subtype_caveat = QLabel(SUBTYPE_CAVEAT)
        self.subtype_caveat.setObjectName("subtypeCaveat")
        self.subtype_caveat.setWordWrap(True)
        self.subtype_caveat.setFont(small)
        self.subtype_caveat.setStyleSheet("color: #5f6368;")
        self.subtype_value.setStyleSheet("color: #5f6368;")
        self.subtype_value.setFont(small)

        # How far the heat map can be trusted for this model (its card's audit) and this map's share in the body.
        self.map_trust_value = QLabel("")
        self.map_trust_value.setObjectName("mapTrustValue")
        self.map_trust_value.setWordWrap(True)
        self.map_trust_value.setFont(small)
        self._map_audit: object | None = None

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        form.addRow("P(pneumonia)", self.probability_value)
        form.addRow("Threshold", self.threshold_value)
        form.addRow("Threshold from", self.threshold_source_value)
        form.addRow("Model", self.model_value)

        layout = QVBoxLayout(self)
        layout.addWidget(self.caveat)
        layout.addWidget(self.status_value)
        level_row = QHBoxLayout()
        level_row.addWidget(self.level_value, 1)
        level_row.addWidget(self.level_probability)
        layout.addLayout(level_row)
        layout.addWidget(self.level_figures)
        layout.addWidget(self.label_value)
        layout.addWidget(self.label_caption)
        layout.addWidget(self.refusal_value)
        layout.addWidget(self.score_anyway_button)
        layout.addWidget(self.override_note)
        layout.addSpacing(4)
        layout.addWidget(self.probability_bar)
        layout.addLayout(form)
        layout.addWidget(self.subtype_value)
        layout.addWidget(self.subtype_caveat)
        layout.addWidget(self.map_trust_value)
        layout.addWidget(self.note)
        self.clear("No image")

    def clear(self, status: str) -> None:
        self.status_value.setText(status)
        self.status_value.setVisible(bool(status))
        self.label_value.setText("—")
        self.label_value.setStyleSheet("")
        self.label_caption.setText(LABEL_CAPTION)
        self._show_level(None)
        self.probability_value.setText("—")
        self.threshold_value.setText("—")
        self.probability_bar.set_values(None, None)
        self._show_refusal("", button=False)
        self._show_subtype(None)
        self.override_note.setVisible(False)
        self.map_trust_value.setVisible(False)

    def _show_refusal(self, reason: str, button: bool) -> None:
        self.refusal_value.setText(reason)
        self.refusal_value.setVisible(bool(reason))
        self.score_anyway_button.setVisible(button)
        self.score_anyway_button.setEnabled(button)

    def _show_subtype(self, prediction: Prediction | None) -> None:
        shown = False
        if prediction is not None and prediction.subtype is not None and prediction.p_viral is not None:
            shown = True
            self.subtype_value.setText(
                f"Secondary: subtype {prediction.subtype} · "
                f"P(viral | pneumonia) {format_probability(prediction.p_viral)}"
            )
        self.subtype_value.setVisible(shown)
        self.subtype_caveat.setVisible(shown)

    def _show_level(self, prediction: Prediction | None) -> None:
        """The level, or nothing (refused, cleared, or a model without levels: the label is then the big line)."""
        band = prediction.level_band if prediction is not None else None
        shown = band is not None and prediction is not None and prediction.probability is not None
        self.level_value.setVisible(shown)
        self.level_probability.setVisible(shown)
        self.level_figures.setVisible(shown)
        self.label_value.setFont(self._label_fonts[1] if shown else self._label_fonts[0])
        if not shown or band is None or prediction is None or prediction.probability is None:
            self.level_value.setText("")
            self.level_probability.setText("")
            self.level_figures.setText("")
            return
        from ..core.site_profiles import describe_source

        colour = LEVEL_COLOURS.get(band.level, "")
        self.level_value.setText(band.text)
        self.level_value.setStyleSheet(f"color: {colour};")
        self.level_value.setToolTip(LEVEL_MEANING.get(band.level, ""))
        self.level_probability.setText(f"P(pneumonia) {format_probability(prediction.probability)}")
        self.level_figures.setText(
            f"{LEVEL_MEANING.get(band.level, '').capitalize()}: {band.figures()} "
            f"(points from the {describe_source(band.source)})"
        )
        self.label_caption.setText(LABEL_CAPTION_WITH_LEVEL)

    def set_busy_override(self) -> None:
        """While the refused image is being scored anyway."""
        self.score_anyway_button.setEnabled(False)
        self.score_anyway_button.setText("Scoring…")

    def set_map_audit(self, spec: object | None) -> None:
        """The model card's `explanation_audit` section (None: the model's maps were never audited)."""
        self._map_audit = spec

    def set_map_share(self, body_share: float | None, has_map: bool = True) -> None:
        """This image's map: its share of mass inside the body (None: no positive evidence)."""
        from ..core.explanation_audit import map_trust_text

        self.map_trust_value.setText(map_trust_text(self._map_audit, body_share) if has_map else "")
        self.map_trust_value.setVisible(has_map)

    def set_model_info(self, name: str, version: str) -> None:
        self.model_value.setText(f"{name} {version}".strip() if name else "—")

    def set_threshold_source(self, text: str) -> None:
        self.threshold_source_value.setText(text or "—")

    def set_prediction(self, prediction: Prediction, positive_label: str = "PNEUMONIA") -> None:
        self.score_anyway_button.setText("Score anyway")
        self.status_value.setVisible(False)
        self.set_model_info(prediction.model_name, f"v{prediction.model_version}")
        self.threshold_value.setText(format_probability(prediction.threshold))
        if prediction.refused or prediction.probability is None:
            # Its own state: no probability, no label colour, the reason and the way to override it.
            colour = QColor(STATUS_COLOURS[RowStatus.REFUSED])
            self.label_value.setText(REFUSED_LABEL)
            self.label_value.setStyleSheet(f"color: {colour.name()};")
            self.label_caption.setText(REFUSED_CAPTION)
            self.probability_value.setText("—")
            self.probability_bar.set_values(None, prediction.threshold)
            self._show_refusal(f"Refused: {prediction.refusal_reason or 'not a chest X-ray'}", button=True)
            self.override_note.setVisible(False)
            self._show_subtype(None)
            self._show_level(None)
            return
        status = RowStatus.POSITIVE if prediction.label == positive_label else RowStatus.NORMAL
        colour = QColor(STATUS_COLOURS[status])
        self.label_value.setText(prediction.label or "—")
        self.label_value.setStyleSheet(f"color: {colour.name()};")
        self.label_caption.setText(LABEL_CAPTION)
        self._show_level(prediction)
        self.probability_value.setText(format_probability(prediction.probability)
                                       + ("  (overridden)" if prediction.overridden else ""))
        self.probability_bar.set_values(prediction.probability, prediction.threshold, colour)
        self._show_refusal("", button=False)
        self.override_note.setText(
            f"Overridden: scored anyway, although the model would refuse it ({prediction.refusal_reason}). "
            "The probability is unreliable for such an image."
        )
        self.override_note.setVisible(prediction.overridden)
        self._show_subtype(prediction)
        self.set_model_info(prediction.model_name, f"v{prediction.model_version}")
        from ..core.site_profiles import describe_source

        self.set_threshold_source(describe_source(prediction.threshold_source))
