"""The level in the window: the result panel (level first, probability beside it, the band's figures), the batch
list's rows and the PDF report. No screen shows P > 0.5 beside NORMAL without the level that explains it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pneumo_desktop.core.calibration import PlattCalibration
from pneumo_desktop.core.levels import LEVEL_TEXT, OperatingLevels, OperatingPoint
from pneumo_desktop.core.runtime import PneumoniaModel
from tests.conftest import make_fake_card

pytest.importorskip("PySide6")

PLATT = PlattCalibration(1.5, -1.0)


class _Engine:
    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:  # not run: predictions come from raw values
        raise AssertionError("not used")


def _model(threshold: float, rule_out: float, rule_in: float, levels: bool = True) -> PneumoniaModel:
    sections: dict[str, Any] = {}
    if levels:
        sections = {
            "calibration": PLATT.as_dict(),
            "levels": OperatingLevels(OperatingPoint(rule_out, "out", 0.985, 0.88),
                                      OperatingPoint(rule_in, "in", 0.94, 0.957),
                                      {"low": 0.34, "indeterminate": 0.054, "high": 0.606}, 312,
                                      "test half A (development)").as_dict(),
        }
    return PneumoniaModel(Path("."), make_fake_card(threshold, "test", **sections), _Engine())


def test_panel_shows_the_level_first_with_its_figures(qtbot) -> None:
    from pneumo_desktop.gui.prediction_panel import LABEL_CAPTION_WITH_LEVEL, PredictionPanel

    panel = PredictionPanel()
    qtbot.addWidget(panel)
    panel.show()
    # a raw output whose calibrated probability is above 0.5 but below the main threshold: NORMAL at the threshold
    model = _model(threshold=0.9, rule_out=0.3, rule_in=0.95)
    pred = model.prediction(None, 0.85)
    assert pred.probability is not None and 0.5 < pred.probability < 0.9 and pred.label == "NORMAL"
    panel.set_prediction(pred)
    assert panel.level_value.isVisible() and panel.level_value.text() == LEVEL_TEXT["indeterminate"]
    assert panel.level_probability.text() == f"P(pneumonia) {pred.probability:.3f}"
    figures = panel.level_figures.text()
    assert "5% of images in this band" in figures and "test half A (development)" in figures
    assert "model card" in figures
    assert panel.label_caption.text() == LABEL_CAPTION_WITH_LEVEL
    # the level sits above the label, and its font is the larger
    assert panel.level_value.y() < panel.label_value.y()
    assert panel.level_value.font().pointSize() > panel.label_value.font().pointSize()
    # high and low show their point's sensitivity and specificity
    panel.set_prediction(model.prediction(None, 0.999))
    assert panel.level_value.text() == "High" and "specificity 0.957" in panel.level_figures.text()
    panel.set_prediction(model.prediction(None, 0.1))
    assert panel.level_value.text() == "Low" and "sensitivity 0.985" in panel.level_figures.text()


def test_panel_without_levels_is_as_before_and_refused_hides_the_level(qtbot) -> None:
    from pneumo_desktop.gui.prediction_panel import LABEL_CAPTION, PredictionPanel

    panel = PredictionPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_prediction(_model(0.5, 0, 0, levels=False).prediction(None, 0.7))
    assert not panel.level_value.isVisible() and panel.label_value.text() == "PNEUMONIA"
    assert panel.label_caption.text() == LABEL_CAPTION
    panel.set_prediction(_model(0.9, 0.3, 0.95).prediction(None, 0.85))
    assert panel.level_value.isVisible()
    panel.clear("No image")
    assert not panel.level_value.isVisible() and panel.level_value.text() == ""


def test_batch_rows_show_the_level(qtbot, tmp_path: Path) -> None:
    from pneumo_desktop.gui.file_list import LEVEL_COLOURS, FileListModel

    rows = FileListModel()
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    rows.set_paths(paths)
    rows.set_result(paths[0], 0.765, "NORMAL", level="indeterminate")
    rows.set_results([(paths[1], 0.9, "PNEUMONIA", "", "", "high"), (paths[2], 0.2, "NORMAL", "", "")])
    assert rows.data(rows.index(0, 2)) == "Indeterminate: needs a reader · NORMAL"
    assert rows.data(rows.index(1, 2)) == "High · PNEUMONIA"
    assert rows.data(rows.index(2, 2)) == "NORMAL"  # no level given (a model without levels)
    assert rows.data(rows.index(0, 2), 9).name() == LEVEL_COLOURS["indeterminate"]  # foreground role
    assert "Level: Indeterminate" in rows.data(rows.index(0, 0), 3)


def test_pdf_report_states_the_level(qtbot, tmp_path: Path, monkeypatch) -> None:
    from PySide6.QtGui import QImage

    from pneumo_desktop.gui import report

    painted: list[str] = []
    original = report._Page.text

    def recording(self, text: str, *args, **kwargs) -> None:
        painted.append(text)
        original(self, text, *args, **kwargs)

    monkeypatch.setattr(report._Page, "text", recording)
    image = QImage(64, 64, QImage.Format.Format_RGB888)
    image.fill(0)
    model = _model(threshold=0.9, rule_out=0.3, rule_in=0.95)
    pred = model.prediction(Path("x.png"), 0.85)
    data = report.ReportData(Path("x.png"), image, image, None, pred, model.card)
    out = tmp_path / "r.pdf"
    report.write_pdf_report(data, out)
    assert out.read_bytes().startswith(b"%PDF")
    assert any(t.startswith("Result level: Indeterminate: needs a reader") and f"{pred.probability:.3f}" in t
               for t in painted)
    assert any("5% of images in this band" in t for t in painted)


def test_model_card_rows_name_calibration_and_levels() -> None:
    from pneumo_desktop.gui.model_info import card_rows

    rows = dict(card_rows(_model(threshold=0.9, rule_out=0.3, rule_in=0.95).card))
    assert "slope 1.500" in rows["Calibration"] and "intercept -1.000" in rows["Calibration"]
    assert rows["Result levels"].startswith("low below 0.300 (sensitivity 0.985), high from 0.950")
    plain = dict(card_rows(_model(0.5, 0, 0, levels=False).card))
    assert "Calibration" not in plain and "Result levels" not in plain
