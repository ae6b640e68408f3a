"""The main window: file list | image view | prediction and overlay controls.

The window owns no heavy work: it turns user actions into requests to the controllers in
`workers.py` and turns their signals into widget updates.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import numpy as np
from PySide6.QtCore import QSettings, QSize, Qt, QThreadPool, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QStyle,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from .. import RESEARCH_USE_STATEMENT
from ..core.explanation_audit import with_body_share
from ..core.imaging import MODEL_INPUT_PIXELS, find_images
from ..core.model_card import ModelIntegrityError
from ..core.overlay import colorbar, render_overlay
from ..core.resources import samples_dir
from .annotate import annotated_overlay
from .background import run_in_background
from .dialogs import AboutDialog, ResumeChoice, ask_resume, show_message
from .display_workers import LatestImageRequester, LatestRenderer, RenderJob, RenderResult, cam_strength
from .evaluation_dialogs import apply_site_profile, install_site_actions
from .file_list import FILTERS, FileListModel, FileListView, path_key, split_images
from .icons import app_icon, glyph
from .image_view import ImageView, array_to_qimage
from .options import OverlayOptions, WindowLevel, apply_window_level, full_range_window
from .overlay_controls import DisplayControls, OverlayControls
from .prediction_panel import PredictionPanel
from .report import ExportError, ReportData, save_png, write_pdf_report
from .settings import SettingsStore
from .workers import (
    BatchController,
    BatchOutcome,
    ModelLoadController,
    ModelLoader,
    default_model_loader,
    describe_error,
)

if TYPE_CHECKING:
    from ..core.batch import BatchProgress
    from ..core.imaging import LoadedImage
    from ..core.runtime import Explanation, PneumoniaModel

log = logging.getLogger(__name__)

_Dialog = TypeVar("_Dialog", bound=QDialog)

APP_TITLE = "Pneumo Desktop"
DEFAULT_SIZE = QSize(1280, 800)
ROWS_PER_TURN = 8  # file-list rows updated per event-loop turn while a batch reports results
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.dcm *.dicom);;All files (*)"
MODEL_HELP = (
    "What to do: reinstall Pneumo Desktop so that its bundled model folder (resources/model) is "
    "complete, or choose a valid model folder with File ▸ Open Model Folder…. You can still open "
    "and view images; predictions stay off until a model is loaded."
)

# Card-like sections for the right panel (fonts set here do not propagate to child widgets).
PANEL_STYLE = """
QGroupBox { font-weight: 600; border: 1px solid #d5d9de; border-radius: 6px; margin-top: 12px;
            padding: 10px 8px 8px 8px; background: palette(base); }
QGroupBox::title { subcontrol-origin: margin; subcontrol-position: top left; left: 8px; padding: 0 4px; }
"""


@dataclass
class DisplayState:
    """What is on screen now; everything the re-blend needs is cached here."""

    path: Path | None = None
    image: LoadedImage | None = None
    explanation: Explanation | None = None
    display_grey: np.ndarray | None = None  # window/level applied (display only)
    overlay_rgb: np.ndarray | None = None


class MainWindow(QMainWindow):
    modelReady = Signal(object)  # PneumoniaModel
    modelFailed = Signal(str)
    imageShown = Signal(object)  # LoadedImage
    predictionShown = Signal(object)  # Explanation
    fileFailed = Signal(object, str)  # path, message
    overlayRendered = Signal()
    batchFinished = Signal(object)  # BatchOutcome
    batchFailed = Signal(str)
    closed = Signal()  # the window has closed: the app should quit (run_gui connects it)

    def __init__(
        self,
        *,
        model: PneumoniaModel | None = None,
        model_loader: ModelLoader | None = None,
        settings: SettingsStore | QSettings | None = None,
        pool: QThreadPool | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.settings = settings if isinstance(settings, SettingsStore) else SettingsStore(settings)
        # A private pool: the batch holds one thread for minutes and must not starve display work.
        self.pool = pool or QThreadPool(self)
        if pool is None:
            self.pool.setMaxThreadCount(4)
        self.model: PneumoniaModel | None = None
        self.model_error = ""
        self.state = DisplayState()
        self.last_message: tuple[str, str, str] | None = None  # (kind, title, text): for tests and logs
        self._dialogs: list[QWidget] = []
        self._window_level = WindowLevel()
        self._overrides: dict[str, Explanation] = {}  # path key -> explanation scored anyway (refuse=False)
        self._closing = False
        self._inputs: list[Path] = []  # what was opened (files and folders), for the session
        self._rotation = 0  # display orientation, quarter turns clockwise
        self._flipped = False

        self.requester = LatestImageRequester(self.pool, self)
        self.model_controller = ModelLoadController(self.pool, self)
        self.renderer = LatestRenderer(self.pool, self)
        # The batch gets its own one-thread pool: it holds its thread for minutes.
        self.batch_pool = QThreadPool(self)
        self.batch_pool.setMaxThreadCount(1)
        self.batch = BatchController(self.batch_pool, self)

        self._build_widgets()
        self._build_actions()
        self._build_menus_and_toolbar()
        self._build_status_bar()
        self._connect()
        self._restore_settings()

        # (path, probability, label, error, refusal_reason) per batch row
        self._row_queue: deque[tuple[Path, float | None, str, str, str]] = deque()
        self._row_timer = QTimer(self)
        self._row_timer.setSingleShot(True)
        self._row_timer.setInterval(0)
        self._row_timer.timeout.connect(self._drain_rows)

        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(0)  # coalesces a burst of slider moves into one re-blend
        self._render_timer.timeout.connect(self._render)

        self.setWindowTitle(APP_TITLE)
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self._update_actions()

        if model is not None:
            self._set_model(model)
        else:
            self.load_model(model_loader or default_model_loader())

    # =========================================================================================
    # Construction
    # =========================================================================================
    def _build_widgets(self) -> None:
        self.file_model = FileListModel(self)
        self.file_list = FileListView(self.file_model)
        self.file_list.setObjectName("fileList")
        self.file_header = QLabel("Images")
        self.file_header.setObjectName("fileHeader")
        self.file_header.setStyleSheet("font-weight: 600;")
        self.filter_combo = QComboBox()
        self.filter_combo.setObjectName("listFilter")
        self.filter_combo.addItems(list(FILTERS))
        self.filter_combo.setToolTip("Show only some rows (click a column header to sort)")
        self.filter_combo.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        self.other_files_label = QLabel("")
        self.other_files_label.setObjectName("otherFiles")
        self.other_files_label.setWordWrap(True)
        self.other_files_label.setStyleSheet("color: #5f6368;")
        self.other_files_label.hide()
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(8, 8, 4, 8)
        header_row = QHBoxLayout()
        header_row.addWidget(self.file_header)
        header_row.addStretch(1)
        header_row.addWidget(self.filter_combo)
        left_layout.addLayout(header_row)
        left_layout.addWidget(self.file_list)
        left_layout.addWidget(self.other_files_label)
        left.setMinimumWidth(200)

        # Side by side is two linked views (same zoom and region), not two halves of one canvas.
        self.view = ImageView()
        self.view.setObjectName("imageView")
        self.view2 = ImageView()
        self.view2.setObjectName("overlayView")
        self.view2.hide()
        self.view_area = QSplitter(Qt.Orientation.Horizontal)
        self.view_area.setChildrenCollapsible(False)
        self.view_area.addWidget(self.view)
        self.view_area.addWidget(self.view2)

        self.prediction_panel = PredictionPanel()
        self.overlay_controls = OverlayControls(self.settings.overlay_options())
        self.display_controls = DisplayControls()
        right_content = QWidget()
        right_content.setObjectName("rightPanel")
        right_content.setStyleSheet(PANEL_STYLE)
        right_layout = QVBoxLayout(right_content)
        right_layout.setContentsMargins(4, 8, 8, 8)
        right_layout.setSpacing(6)
        right_layout.addWidget(self.prediction_panel)
        right_layout.addWidget(self.overlay_controls)
        right_layout.addWidget(self.display_controls)
        self.header_panel = QGroupBox("DICOM header")
        self.header_panel.setObjectName("dicomHeader")
        self.header_text = QLabel()
        self.header_text.setObjectName("dicomHeaderText")
        self.header_text.setWordWrap(True)
        self.header_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        QVBoxLayout(self.header_panel).addWidget(self.header_text)
        self.header_panel.hide()
        right_layout.addWidget(self.header_panel)
        right_layout.addStretch(1)
        right = QScrollArea()
        right.setWidget(right_content)
        right.setWidgetResizable(True)
        right.setFrameShape(QFrame.Shape.NoFrame)
        right.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        right.setMinimumWidth(320)
        self.right_panel = right
        # Clicks in the side panel leave the keyboard with the file list, so the arrow keys keep moving
        # through the images after a slider drag; Tab still reaches every control.
        right.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        for control in right_content.findChildren(QWidget):
            if control.focusPolicy() & Qt.FocusPolicy.ClickFocus:
                control.setFocusPolicy(Qt.FocusPolicy.TabFocus)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.view_area)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 0)
        self.splitter.setCollapsible(1, False)
        self.splitter.setSizes([370, 570, 340])
        self.setCentralWidget(self.splitter)

    def _action(
        self,
        text: str,
        slot: Callable[..., object],
        shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None,
        icon: QIcon | None = None,
        checkable: bool = False,
        tip: str = "",
    ) -> QAction:
        action = QAction(text, self)
        if icon is not None:
            action.setIcon(icon)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setCheckable(checkable)
        if tip:
            action.setToolTip(tip)
            action.setStatusTip(tip)
        (action.toggled if checkable else action.triggered).connect(slot)
        return action

    def _build_actions(self) -> None:
        std = self.style().standardIcon
        sp = QStyle.StandardPixmap
        self.act_open = self._action(
            "&Open Images…",
            self._choose_files,
            QKeySequence.StandardKey.Open,
            std(sp.SP_DialogOpenButton),
            tip="Open one or more X-ray images",
        )
        self.act_open_folder = self._action(
            "Open &Folder…",
            self._choose_folder,
            "Ctrl+Shift+O",
            std(sp.SP_DirOpenIcon),
            tip="Open every image in a folder",
        )
        self.act_open_model = self._action(
            "Open &Model Folder…", self._choose_model_folder, tip="Load a different exported model folder"
        )
        self.act_batch = self._action(
            "&Score Folder to CSV…",
            self._choose_batch,
            "Ctrl+B",
            glyph("batch"),
            tip="Score every image in a folder and write a CSV (resumable)",
        )
        self.act_cancel_batch = self._action(
            "&Cancel Scoring", self.cancel_batch, tip="Stop the running batch; rows written so far stay in the CSV"
        )
        self.act_export_png = self._action(
            "Export Overlay as &PNG…",
            self._choose_png,
            "Ctrl+E",
            glyph("png"),
            tip="Save the Grad-CAM overlay as a PNG image",
        )
        self.act_export_pdf = self._action(
            "Export &Report as PDF…",
            self._choose_pdf,
            "Ctrl+P",
            glyph("pdf"),
            tip="Save a one-page PDF report for this image",
        )
        self.act_quit = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_fit = self._action(
            "&Fit to Window", self.view.fit, "Ctrl+0", glyph("fit"), tip="Fit the image to the window"
        )
        self.act_actual = self._action(
            "&Actual Size (1:1)",
            self.view.actual_size,
            "Ctrl+1",
            glyph("one_to_one"),
            tip="One image pixel per screen pixel",
        )
        self.act_zoom_in = self._action("Zoom &In", lambda: self.view.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn)
        # Ctrl+= as well: on most keyboards "+" needs Shift, and "=" is the key people press.
        self.act_zoom_in.setShortcuts(
            [QKeySequence(QKeySequence.StandardKey.ZoomIn), QKeySequence("Ctrl+="), QKeySequence("Ctrl++")]
        )
        self.act_recursive = self._action(
            "Include &Subfolders",
            self.settings.set_include_subfolders,
            checkable=True,
            tip="Folders are opened and scored with their subfolders (e.g. test/NORMAL, test/PNEUMONIA)",
        )
        self.act_recursive.setChecked(self.settings.include_subfolders())
        self.act_samples = self._action(
            "Open &Sample X-rays", self.open_samples, tip="The sample chest X-rays that come with the app"
        )
        self.act_next = self._action(
            "&Next Image", lambda: self.file_list.step(1), "N", tip="Next image in the list (from anywhere)"
        )
        self.act_next.setShortcuts([QKeySequence("N"), QKeySequence("Ctrl+Down")])
        self.act_previous = self._action(
            "&Previous Image", lambda: self.file_list.step(-1), "P", tip="Previous image in the list (from anywhere)"
        )
        self.act_previous.setShortcuts([QKeySequence("P"), QKeySequence("Ctrl+Up")])
        self.act_rotate = self._action(
            "&Rotate 90° Clockwise",
            lambda: self._orient(1, False),
            "Ctrl+]",
            tip="Rotate the display (the model is not affected)",
        )
        self.act_rotate_back = self._action("Rotate 90° &Anticlockwise", lambda: self._orient(-1, False), "Ctrl+[")
        self.act_flip = self._action(
            "&Flip Horizontally",
            lambda: self._orient(0, True),
            "Ctrl+Shift+H",
            tip="Mirror the display (the model is not affected)",
        )
        self.act_full_screen = self._action(
            "F&ull Screen", self._on_full_screen, QKeySequence.StandardKey.FullScreen, checkable=True
        )
        self.act_full_screen.setShortcuts([QKeySequence("F11"), QKeySequence(QKeySequence.StandardKey.FullScreen)])
        self.act_shortcuts = self._action("&Keyboard Shortcuts", self.show_shortcuts, "F1")
        self.act_zoom_out = self._action("Zoom &Out", lambda: self.view.zoom_by(0.8), QKeySequence.StandardKey.ZoomOut)
        self.act_invert = self._action(
            "&Invert",
            self._on_invert_action,
            "Ctrl+I",
            glyph("invert"),
            checkable=True,
            tip="Invert the display (the model is not affected)",
        )
        self.act_reset_wl = self._action("&Reset Window/Level", self.display_controls.reset, "Ctrl+R")
        self.act_overlay = self._action(
            "Show &Overlay",
            self._on_overlay_action,
            "O",
            glyph("overlay"),
            checkable=True,
            tip="Show or hide the Grad-CAM overlay",
        )
        self.act_side = self._action(
            "&Side by Side",
            self._on_side_action,
            "S",
            glyph("side_by_side"),
            checkable=True,
            tip="Original and overlay side by side",
        )
        self.act_about = self._action("&About Pneumo Desktop", self.show_about, icon=std(sp.SP_MessageBoxInformation))
        self.act_about_qt = self._action("About &Qt", lambda: QMessageBox.aboutQt(self))
        opts = self.overlay_controls.options()
        self.act_overlay.setChecked(opts.enabled)
        self.act_side.setChecked(opts.side_by_side)

    def _build_menus_and_toolbar(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.act_open)
        file_menu.addAction(self.act_open_folder)
        file_menu.addAction(self.act_recursive)
        self.recent_menu = QMenu("Open &Recent", self)
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.act_batch)
        file_menu.addAction(self.act_cancel_batch)
        install_site_actions(self, file_menu)  # Evaluate Labelled Folder…, Calibrate to This Site…
        file_menu.addSeparator()
        file_menu.addAction(self.act_export_png)
        file_menu.addAction(self.act_export_pdf)
        file_menu.addSeparator()
        file_menu.addAction(self.act_open_model)
        file_menu.addSeparator()
        file_menu.addAction(self.act_quit)
        self._fill_recent_menu()

        view_menu = menu.addMenu("&View")
        for action in (self.act_fit, self.act_actual, self.act_zoom_in, self.act_zoom_out):
            view_menu.addAction(action)
        view_menu.addSeparator()
        for action in (self.act_invert, self.act_reset_wl):
            view_menu.addAction(action)
        view_menu.addSeparator()
        for action in (self.act_rotate, self.act_rotate_back, self.act_flip, self.act_full_screen):
            view_menu.addAction(action)
        view_menu.addSeparator()
        view_menu.addAction(self.act_next)
        view_menu.addAction(self.act_previous)
        view_menu.addSeparator()
        view_menu.addAction(self.act_overlay)
        view_menu.addAction(self.act_side)

        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.act_samples)
        help_menu.addAction(self.act_shortcuts)
        help_menu.addSeparator()
        help_menu.addAction(self.act_about)
        help_menu.addAction(self.act_about_qt)

        toolbar = QToolBar("Main", self)
        toolbar.setObjectName("mainToolbar")
        toolbar.setMovable(False)
        toolbar.setIconSize(QSize(22, 22))
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.act_open.setIconText("Open")
        self.act_open_folder.setIconText("Folder")
        self.act_batch.setIconText("Score folder")
        self.act_fit.setIconText("Fit")
        self.act_actual.setIconText("1:1")
        self.act_invert.setIconText("Invert")
        self.act_overlay.setIconText("Overlay")
        self.act_side.setIconText("Side by side")
        self.act_export_png.setIconText("PNG")
        self.act_export_pdf.setIconText("Report")
        for group in (
            (self.act_open, self.act_open_folder),
            (self.act_batch,),
            (self.act_fit, self.act_actual, self.act_invert),
            (self.act_overlay, self.act_side),
            (self.act_export_png, self.act_export_pdf),
        ):
            for action in group:
                toolbar.addAction(action)
            toolbar.addSeparator()
        self.toolbar = toolbar
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.zoom_label = QLabel("")
        self.zoom_label.setMinimumWidth(70)
        self.pixel_label = QLabel("")
        self.pixel_label.setObjectName("pixelReadout")
        self.pixel_label.setMinimumWidth(200)
        self.batch_progress = QProgressBar()
        self.batch_progress.setObjectName("batchProgress")
        self.batch_progress.setMaximumWidth(220)
        self.batch_progress.setTextVisible(True)
        self.batch_cancel_button = QPushButton("Cancel")
        self.batch_cancel_button.setObjectName("batchCancel")
        self.batch_cancel_button.clicked.connect(self.cancel_batch)
        self.model_status_label = QLabel("")
        self.model_status_label.setObjectName("modelStatus")
        # Always visible, whatever else the status bar is saying.
        self.research_label = QLabel("Research use only — not a medical device")
        self.research_label.setObjectName("researchUse")
        self.research_label.setToolTip(RESEARCH_USE_STATEMENT)
        self.research_label.setStyleSheet("color: #7a4a00; padding: 0 6px;")
        bar.addPermanentWidget(self.batch_progress)
        bar.addPermanentWidget(self.batch_cancel_button)
        bar.addPermanentWidget(self.pixel_label)
        bar.addPermanentWidget(self.zoom_label)
        bar.addPermanentWidget(self.model_status_label)
        bar.addPermanentWidget(self.research_label)
        self.batch_progress.hide()
        self.batch_cancel_button.hide()

    def _connect(self) -> None:
        self.file_list.currentPathChanged.connect(self._on_current_path_changed)
        self.requester.imageReady.connect(self._on_image_ready)
        self.requester.explanationReady.connect(self._on_explanation_ready)
        self.prediction_panel.scoreAnywayRequested.connect(self.score_anyway)
        self.requester.failed.connect(self._on_request_failed)
        self.model_controller.loaded.connect(self._on_model_loaded)
        self.model_controller.failed.connect(self._on_model_failed)
        self.batch.progressMany.connect(self._on_batch_progress)
        self.batch.finished.connect(self._on_batch_finished)
        self.batch.failed.connect(self._on_batch_failed)
        self.renderer.rendered.connect(self._on_rendered)
        self.renderer.failed.connect(self._on_render_failed)
        self.overlay_controls.changed.connect(self._on_overlay_changed)
        self.display_controls.changed.connect(self._on_window_level_changed)
        self.view.zoomChanged.connect(
            lambda z: self.zoom_label.setText(f"Zoom {z * 100:.0f}%" if self.view.has_image else "")
        )
        self.view.viewChanged.connect(lambda: self.view2.copy_view_of(self.view) if self.view2.isVisible() else None)
        self.view2.viewChanged.connect(lambda: self.view.copy_view_of(self.view2) if self.view2.isVisible() else None)
        for view in (self.view, self.view2):
            view.windowDragged.connect(self._on_window_dragged)
            view.pixelHovered.connect(self._on_pixel_hovered)
        self.view.empty_button.clicked.connect(self.open_samples)
        self.filter_combo.currentTextChanged.connect(self.file_list.proxy.set_filter)
        self.view.show_empty_button(samples_dir().is_dir())

    def _restore_settings(self) -> None:
        geometry = self.settings.geometry()
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(DEFAULT_SIZE)
        state = self.settings.window_state()
        if state is not None:
            self.restoreState(state)
        splitter = self.settings.splitter_state()
        if splitter is not None:
            self.splitter.restoreState(splitter)

    # =========================================================================================
    # Model
    # =========================================================================================
    def load_model(self, loader: ModelLoader) -> None:
        """Load a model in the background; the window stays usable meanwhile."""
        self.model_status_label.setText("Loading model…")
        self.statusBar().showMessage("Loading model…")
        self.prediction_panel.set_model_info("", "")
        self.model_controller.start(loader)
        self._update_actions()

    @Slot(object)
    def _on_model_loaded(self, model: object) -> None:
        self._set_model(model)  # type: ignore[arg-type]
        self.statusBar().showMessage("Model ready", 4000)

    def _set_model(self, model: PneumoniaModel) -> None:
        self.model = model
        self._overrides.clear()  # overrides belong to the model that refused
        self.model_error = ""
        self.requester.set_model(model)
        apply_site_profile(self, model)  # the active site profile's threshold, shown in the result panel
        card = model.card
        self.file_model.set_positive_label(card.positive_class)
        self.model_status_label.setText(f"Model: {card.name} v{card.version}")
        self.model_status_label.setToolTip(f"{model.model_dir}\nthreshold {card.threshold:.3f} ({card.threshold_rule})")
        self.prediction_panel.set_model_info(card.name, f"v{card.version}")
        self.prediction_panel.set_map_audit(card.explanation_audit)
        self._update_actions()
        self.modelReady.emit(model)
        # An image opened while the model was loading gets its prediction now.
        if self.state.path is not None:
            self._request(self.state.path)

    @Slot(object)
    def _on_model_failed(self, exc: object) -> None:
        message = describe_error(exc)  # type: ignore[arg-type]
        self.model = None
        self.model_error = message
        self.requester.set_model(None)
        self.model_status_label.setText("No model")
        self.statusBar().showMessage(f"Model not loaded: {message}")
        if isinstance(exc, ModelIntegrityError):
            log.warning("model not loaded: %s", message)
            title, text = "Model missing or damaged", f"The model could not be loaded: {message}"
        else:
            log.error("model loading failed: %r", exc)
            title, text = "Model could not be loaded", f"An unexpected error stopped the model from loading: {message}"
        self._message("critical", title, text, MODEL_HELP)
        if self.state.image is not None:
            self.prediction_panel.clear("No model loaded: predictions are off.")
        self._update_actions()
        self.modelFailed.emit(message)

    def _choose_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open Model Folder", str(self._start_folder()))
        if folder:
            self.load_model(default_model_loader(Path(folder)))

    # =========================================================================================
    # Opening files
    # =========================================================================================
    def open_paths(self, paths: Sequence[Path | str], exclude: Sequence[Path] = (), *, add: bool = False) -> int:
        """Open files and/or folders (menus, drops, recent files, command line). Returns the rows listed.

        `add` appends to the list (drops) instead of replacing it. Folders include their subfolders
        when File ▸ Include Subfolders is on (the default). Files that are not images are counted
        under the list, never listed.
        """
        inputs = [Path(p) for p in paths]
        if not inputs:
            return 0
        missing = [p for p in inputs if not p.exists()]
        excluded = {path_key(p) for p in exclude}
        recursive = self.act_recursive.isChecked()
        try:
            found = find_images([p for p in inputs if p.exists()], recursive=recursive)
            found = [f for f in found if path_key(f) not in excluded] if excluded else found
            files, others = split_images(found)
        except OSError as exc:
            self._message("warning", "Cannot open", f"Could not list {', '.join(map(str, inputs))}: {exc}")
            return 0
        roots = [p for p in inputs if p.is_dir()]
        if add and self.file_model.rowCount():
            added = self.file_model.add_paths(files, roots)
            self.file_model.other_files.extend(others)
            self._inputs.extend(inputs)
        else:
            self.requester.cancel()
            self.state = DisplayState()
            self._row_queue.clear()
            self.file_model.set_paths(files, roots)
            self.file_model.other_files = list(others)
            self._inputs = list(inputs)
            added = files
        for path in inputs:
            if path.exists():
                self.settings.add_recent(path)
        first = inputs[0]
        self.settings.set_last_folder(first if first.is_dir() else first.parent)
        self._update_file_header()
        self.view.show_empty_button(False)
        if missing:
            self.statusBar().showMessage(f"Not found: {', '.join(str(p) for p in missing)}", 8000)
        if added:
            if add and self.file_list.current_path() is not None:
                self.file_list.select_path(added[0])
            else:
                self.file_list.select_row(0)
            self.file_list.setFocus()
            where = inputs[0] if len(inputs) == 1 else f"{len(inputs)} locations"
            if not missing:
                self.statusBar().showMessage(f"Opened {len(added)} image(s) from {where}", 5000)
        elif not add:
            self.view.clear(self._nothing_found_text(inputs, others, recursive))
            self.prediction_panel.clear("No image")
        self._update_actions()
        return len(added)

    @staticmethod
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

    def open_samples(self) -> int:
        """Open the sample X-rays that ship with the app (one click from the empty window)."""
        folder = samples_dir()
        if not folder.is_dir():
            self._message("warning", "No samples", f"The sample folder is missing: {folder}")
            return 0
        return self.open_paths([folder])

    def restore_session(self) -> int:
        """Open what was open when the window last closed (only what still exists)."""
        inputs, current = self.settings.session()
        inputs = [p for p in inputs if p.exists()]
        if not inputs:
            return 0
        rows = self.open_paths(inputs)
        if current is not None:
            self.file_list.select_path(current)
        return rows

    def _start_folder(self) -> Path:
        folder = self.settings.last_folder()
        return folder if folder is not None and folder.is_dir() else Path.home()

    def _choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Open Images", str(self._start_folder()), IMAGE_FILTER)
        if files:
            self.open_paths([Path(f) for f in files])

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open Folder", str(self._start_folder()))
        if folder:
            self.open_paths([Path(folder)])

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_paths()
        for index, path in enumerate(recent, start=1):
            label = f"&{index % 10}  {path.name or path}" + ("/" if path.is_dir() else "")
            action = self.recent_menu.addAction(label)
            action.setToolTip(str(path))
            action.setStatusTip(str(path))
            action.setEnabled(path.exists())
            action.triggered.connect(lambda _checked=False, p=path: self.open_paths([p]))
        if recent:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear Recent", self._clear_recent)
        else:
            self.recent_menu.addAction("No recent files").setEnabled(False)

    def _clear_recent(self) -> None:
        self.settings.clear_recent()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            # Open after the drop returns so the source application is not kept waiting.
            QTimer.singleShot(0, lambda: self.open_paths(paths, add=True))

    def _update_file_header(self) -> None:
        n = self.file_model.rowCount()
        self.file_header.setText(f"Images ({n})" if n else "Images")
        others = self.file_model.other_files
        self.other_files_label.setVisible(bool(others))
        if others:
            self.other_files_label.setText(f"{len(others)} other file(s) are not images and are not listed")
            self.other_files_label.setToolTip(
                "\n".join(str(p) for p in others[:40]) + ("\n…" if len(others) > 40 else "")
            )

    # =========================================================================================
    # Showing one image: decode + explain in a worker, latest request wins
    # =========================================================================================
    @Slot(object)
    def _on_current_path_changed(self, path: object) -> None:
        self._request(Path(str(path)))

    def _request(self, path: Path) -> None:
        self.state = DisplayState(path=path)
        self.setWindowTitle(f"{path.name} — {APP_TITLE}")
        self.prediction_panel.clear("Reading image…")
        # Never leave the previous picture under the new name: a busy note until the new one is drawn.
        for view in (self.view, self.view2):
            view.clear(f"Reading {path.name}…")
        self.zoom_label.setText("")
        self.overlay_controls.set_meaning("")
        self.renderer.cancel()
        self.requester.request(path)  # returns at once; the result arrives by signal
        self._update_actions()

    @Slot(object)
    def _on_image_ready(self, image: LoadedImage) -> None:
        previous = self.state.image
        self.state.image = image
        self.state.explanation = None
        self._set_display_source(image, previous)
        self._render(new_image=True)
        if self.model is not None:
            self.prediction_panel.clear("Analysing…")
        elif self.model_controller.busy:
            self.prediction_panel.clear("Waiting for the model to load…")
        else:
            self.prediction_panel.clear("No model loaded: predictions are off.")
        self.statusBar().showMessage(
            f"{image.path.name}: {image.width} × {image.height} px, {image.format}, {image.bit_depth}-bit", 5000
        )
        self._update_actions()
        self.imageShown.emit(image)

    @Slot(object)
    def _on_explanation_ready(self, explanation: Explanation) -> None:
        if explanation.prediction.refused and self.state.path is not None:
            # an image the user already chose to score anyway stays scored when revisited
            explanation = self._overrides.get(path_key(self.state.path), explanation)
        self.state.explanation = explanation
        prediction = explanation.prediction
        self._render()
        positive = self.model.card.positive_class if self.model is not None else "PNEUMONIA"
        self.prediction_panel.set_prediction(prediction, positive)
        self.prediction_panel.set_map_share(explanation.body_share, has_map=explanation.cam is not None)
        # (a prediction that is not refused has a probability and a label: the casts below say so to mypy)
        self.overlay_controls.set_meaning(
            REFUSED_MEANING
            if prediction.refused
            else overlay_meaning(cast(str, prediction.label), cast(float, prediction.probability), positive)
        )
        if self.state.path is not None:
            if prediction.refused:
                self.file_model.set_refused(self.state.path, prediction.refusal_reason or "")
            else:
                self.file_model.set_result(self.state.path, cast(float, prediction.probability),
                                           cast(str, prediction.label),
                                           (prediction.refusal_reason or "") if prediction.overridden else "")
        self._update_actions()
        self.predictionShown.emit(explanation)

    def score_anyway(self) -> None:
        """Score the refused image on screen regardless (refuse=False); the result is marked overridden."""
        state, model = self.state, self.model
        if model is None or state.image is None or state.path is None:
            return
        image, path = state.image, state.path
        self.prediction_panel.set_busy_override()
        # Not through the requester (newest request wins): a user's explicit choice is never dropped.
        # The result is kept for the image either way and shown if it is still on screen.
        run_in_background(
            self.pool,
            lambda _progress: with_body_share(model.explain(image, refuse=False), image.grey),
            on_result=lambda explanation: self._on_override_ready(path, model, explanation),
            on_error=lambda exc: self._on_override_failed(path, exc),
            owner=self,
        )

    def _on_override_ready(self, path: Path, model: PneumoniaModel, explanation: Explanation) -> None:
        if model is not self.model:
            return  # the model changed meanwhile: overrides belong to the model that refused
        self._overrides[path_key(path)] = explanation
        if self._on_screen(path):
            self._on_explanation_ready(explanation)

    def _on_override_failed(self, path: Path, exc: BaseException) -> None:
        message = describe_error(exc)
        log.warning("scoring %s anyway failed: %s", path, message)
        if self._on_screen(path):
            self._on_request_failed(path, message)
        else:  # the row stays refused; the failure is said where the user looks now
            self.statusBar().showMessage(f"Could not score {path.name} anyway: {message}", 10000)

    def _on_screen(self, path: Path) -> bool:
        return self.state.path is not None and path_key(self.state.path) == path_key(path)

    @Slot(object, str)
    def _on_request_failed(self, path: object, message: str) -> None:
        path = Path(str(path))
        self.file_model.set_error(path, message)
        self.state = DisplayState(path=path)
        for view in (self.view, self.view2):
            view.clear(f"Cannot show {path.name}\n\n{message}")
        self.zoom_label.setText("")
        self.prediction_panel.clear(f"Could not read this file: {message}")
        # The full message is in the view and the row; the status bar gets a short line that fits.
        self.statusBar().showMessage(f"{path.name} cannot be read (the reason is shown in the image area)", 10000)
        self._update_actions()
        self.fileFailed.emit(path, message)

    # =========================================================================================
    # Display: window/level and overlay are re-blended from cached arrays, never re-inferred
    # =========================================================================================
    def overlay_options(self) -> OverlayOptions:
        return self.overlay_controls.options()

    def _schedule_render(self) -> None:
        self._render_timer.start()

    def rendering_idle(self) -> bool:
        """True when the view shows the current settings (no re-blend scheduled or running)."""
        return not self._render_timer.isActive() and not self.renderer.busy

    def _render(self, new_image: bool = False) -> None:
        """Ask for a re-blend of what is on screen; the result arrives in `_on_rendered`."""
        state = self.state
        if state.image is None:
            return
        cam = state.explanation.cam if state.explanation is not None else None  # None for a refused image
        probability = state.explanation.prediction.probability if state.explanation is not None else None
        strength = cam_strength(probability) if probability is not None else 1.0
        image = state.image
        self.renderer.request(
            RenderJob(
                image.grey, cam, self._window_level, self.overlay_controls.options(), new_image,
                source=image.raw, source_inverted=image.raw_inverted, cam_strength=strength,
            )
        )

    @Slot(object)
    def _on_rendered(self, result: RenderResult) -> None:
        state = self.state
        if state.image is None or result.job.grey is not state.image.grey:
            return  # rendered for an image that is no longer shown
        state.display_grey = result.display_grey
        state.overlay_rgb = result.overlay_rgb
        options = result.job.options
        new_image = result.job.new_image
        if options.side_by_side and result.overlay_image is not None:
            self.view.set_image(result.display_image, "Image", new_image=new_image)
            self.view2.show()
            self.view2.set_image(result.overlay_image, "Grad-CAM overlay", new_image=new_image)
            self.view2.shown_path = state.path
            self.view2.set_orientation(self._rotation, self._flipped)
            self.view2.copy_view_of(self.view)
        else:
            self.view2.hide()
            shown = result.overlay_image if result.overlay_image is not None else result.display_image
            self.view.set_image(shown, new_image=new_image)
        self.view.shown_path = state.path
        if new_image:
            self.view.set_orientation(self._rotation, self._flipped)
        self.zoom_label.setText(f"Zoom {self.view.zoom() * 100:.0f}%")
        self.overlayRendered.emit()

    @Slot(object)
    def _on_render_failed(self, exc: object) -> None:
        self.statusBar().showMessage(f"Could not draw the image: {describe_error(exc)}", 10000)  # type: ignore[arg-type]

    @Slot(object)
    def _on_overlay_changed(self, options: OverlayOptions) -> None:
        for action, value in ((self.act_overlay, options.enabled), (self.act_side, options.side_by_side)):
            action.blockSignals(True)
            action.setChecked(value)
            action.blockSignals(False)
        self.settings.set_overlay_options(options)
        self._schedule_render()

    @Slot(object)
    def _on_window_level_changed(self, window: WindowLevel) -> None:
        self._window_level = window
        self.act_invert.blockSignals(True)
        self.act_invert.setChecked(window.invert)
        self.act_invert.blockSignals(False)
        self._schedule_render()

    def _set_display_source(self, image: LoadedImage, previous: LoadedImage | None) -> None:
        """Window/level in this image's own units; DICOM starts at the window its model input used."""
        if image.raw is None:
            self.header_panel.hide()
            if previous is None or previous.raw is not None:  # units changed: back to the full grey range
                self.display_controls.set_source(0, 255, WindowLevel(), [], "")
                self.display_controls.set_window_level(WindowLevel(invert=self._window_level.invert))
            return
        low, high = float(image.raw.min()), float(image.raw.max())
        full = full_range_window(low, high)
        presets = [
            (f"File window {i + 1} (C {c:g}, W {w:g})", WindowLevel(round(c), max(round(w), 2)))
            for i, (c, w) in enumerate(image.windows)
        ]
        presets.append((f"Full range ({low:g} to {high:g})", full))
        default = presets[0][1] if image.windows else full
        if image.windows:
            c, w = image.windows[0]
            note = f"The model reads this file through its stored window (C {c:g}, W {w:g})."
        else:
            note = "The model reads this file's full data range."
        self.display_controls.set_source(int(np.floor(low)), int(np.ceil(high)), default, presets, note)
        self.display_controls.set_window_level(WindowLevel(default.level, default.width, self._window_level.invert))
        self.display_controls.setToolTip(MODEL_INPUT_PIXELS)
        # One wrapped line per tag: a table would size the side panel to its longest keyword.
        lines = "<br>".join(f"<b>{_html(name)}</b>: {_html(value)}" for name, value in image.header)
        self.header_text.setText(lines or "No header tags")
        self.header_panel.show()

    @Slot(int, int)
    def _on_window_dragged(self, dx: int, dy: int) -> None:
        """Right-button drag on the image: horizontal = width, vertical = level (as in DICOM viewers)."""
        step = self.display_controls.value_step()
        self.display_controls.adjust(dy * step, dx * step)

    @Slot(object)
    def _on_pixel_hovered(self, point: object) -> None:
        image = self.state.image
        if point is None or image is None:
            self.pixel_label.setText("")
            return
        x, y = cast(tuple[int, int], point)  # ImageView.pixelHovered sends (x, y) or None
        if not (0 <= x < image.width and 0 <= y < image.height):
            self.pixel_label.setText("")
            return
        value = f"{image.grey[y, x]}"
        if image.raw is not None:
            value = f"{image.raw[y, x]:g} (model {image.grey[y, x]})"
        self.pixel_label.setText(f"x {x} y {y} = {value}")

    def _orient(self, turns: int, flip: bool) -> None:
        self._rotation = (self._rotation + turns) % 4
        self._flipped = self._flipped != flip
        for view in (self.view, self.view2):
            view.set_orientation(self._rotation, self._flipped)

    def _on_full_screen(self, checked: bool) -> None:
        self.showFullScreen() if checked else self.showNormal()

    def shortcut_rows(self) -> list[tuple[str, str]]:
        """(action, keys) for every action with a shortcut, as the Help list shows them."""
        rows = []
        for action in self.findChildren(QAction):
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
            f"<tr><td>{_html(name)}&nbsp;&nbsp;</td><td><b>{_html(keys)}</b></td></tr>"
            for name, keys in self.shortcut_rows()
        )
        box = QMessageBox(
            QMessageBox.Icon.NoIcon, "Keyboard Shortcuts", f"<table>{rows}</table>", QMessageBox.StandardButton.Ok, self
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return self._keep(box)

    def _on_invert_action(self, checked: bool) -> None:
        self.display_controls.invert_box.setChecked(checked)

    def _on_overlay_action(self, checked: bool) -> None:
        self.overlay_controls.enabled_box.setChecked(checked)

    def _on_side_action(self, checked: bool) -> None:
        self.overlay_controls.side_by_side_box.setChecked(checked)

    # =========================================================================================
    # Batch scoring
    # =========================================================================================
    def start_batch(self, inputs: Sequence[Path] | Path, output_csv: Path, *, resume: bool = False) -> bool:
        """Score `inputs` to `output_csv` in the background (no dialogs; the menu path asks first)."""
        if isinstance(inputs, (str, Path)):
            inputs = [Path(inputs)]
        inputs = [Path(p) for p in inputs]
        if self.model is None:
            self._message(
                "warning",
                "No model",
                "Batch scoring needs a loaded model. " + (self.model_error or "The model is still loading."),
            )
            return False
        if self.batch.running:
            self.statusBar().showMessage("A batch is already running", 5000)
            return False
        # Show the files being scored, unless the list already holds exactly them.
        try:
            # The output CSV is never an input (score_paths skips it too). No resolve() per file:
            # a syscall per file on the GUI thread adds up in a folder of thousands.
            output_key = path_key(output_csv)
            found = find_images(inputs, recursive=self.act_recursive.isChecked())
            files = split_images(f for f in found if path_key(f) != output_key)[0]
        except OSError as exc:
            self._message("warning", "Cannot score", f"Could not list the folder: {exc}")
            return False
        if sorted(map(path_key, files)) != sorted(map(path_key, self.file_model.paths())):
            self.open_paths(inputs, exclude=[Path(output_csv)])
        try:
            self.batch.start(
                inputs, Path(output_csv), self.model, resume=resume, recursive=self.act_recursive.isChecked()
            )
        except Exception as exc:  # shown to the user
            self._message("critical", "Cannot start scoring", describe_error(exc))
            return False
        self.file_model.mark_queued(True)
        self.batch_progress.setRange(0, 0)  # busy until the first result says how many
        self.batch_progress.show()
        self.batch_cancel_button.setEnabled(True)
        self.batch_cancel_button.show()
        self.statusBar().showMessage(f"Scoring {len(files)} file(s) to {Path(output_csv).name}…")
        self._update_actions()
        return True

    def cancel_batch(self) -> None:
        if self.batch.running:
            self.batch.cancel()
            self.batch_cancel_button.setEnabled(False)
            self.statusBar().showMessage("Cancelling… (finishing the current image)")

    @Slot(object)
    def _on_batch_progress(self, items: list[BatchProgress]) -> None:
        last = items[-1]
        self.batch_progress.setRange(0, max(last.total, 1))
        self.batch_progress.setValue(last.done)
        self.batch_progress.setFormat("Scored %v / %m")
        self._queue_rows(
            [(p.row.path, p.row.probability, p.row.prediction, p.row.error, p.row.refusal_reason) for p in items]
        )

    def _queue_rows(self, rows: list[tuple[Path, float | None, str, str, str]]) -> None:
        self._row_queue.extend(rows)
        if not self._row_timer.isActive():
            self._row_timer.start()

    def _drain_rows(self) -> None:
        """Apply queued list updates a few rows per event-loop turn, so a burst never stalls the loop."""
        chunk = [self._row_queue.popleft() for _ in range(min(ROWS_PER_TURN, len(self._row_queue)))]
        self.file_model.set_results(chunk)
        if self._row_queue:
            self._row_timer.start()

    def rows_pending(self) -> int:
        """List updates received from the batch but not shown yet."""
        return len(self._row_queue)

    @Slot(object)
    def _on_batch_finished(self, outcome: BatchOutcome) -> None:
        # Rows read back from the CSV (resumed ones included); rows already shown are skipped cheaply.
        self._queue_rows([(r.path, r.probability, r.prediction, r.error, r.refusal_reason) for r in outcome.rows])
        self._hide_batch_progress()
        if self._closing:
            # Quit during a batch: the rows written so far stay in the CSV; no box for a window that is gone.
            log.info("batch stopped on quit: %d scored, CSV %s", outcome.summary.scored, outcome.summary.output)
            self.batchFinished.emit(outcome)
            return
        s = outcome.summary
        parts = [f"{s.scored} scored", f"{s.errors} could not be read"]
        if s.refused:
            parts.append(f"{s.refused} refused as not a chest X-ray")
        if s.resumed:
            parts.append(f"{s.resumed} kept from the earlier run")
        verdict = "Scoring cancelled" if s.cancelled else "Scoring finished"
        text = f"{verdict}: {', '.join(parts)} of {s.total} in {s.elapsed_s:.1f} s."
        self.statusBar().showMessage(text, 15000)
        self._message("information", verdict, text, f"Results: {s.output}")
        self._update_actions()
        self.batchFinished.emit(outcome)

    @Slot(object)
    def _on_batch_failed(self, exc: object) -> None:
        message = describe_error(exc)  # type: ignore[arg-type]
        log.error("batch failed: %r", exc)
        self._hide_batch_progress()
        if self._closing:
            self.batchFailed.emit(message)
            return
        self.statusBar().showMessage(f"Scoring failed: {message}", 15000)
        self._message(
            "critical",
            "Scoring failed",
            f"Scoring stopped: {message}",
            "Rows written before the error are kept; run it again and choose Resume.",
        )
        self._update_actions()
        self.batchFailed.emit(message)

    def _hide_batch_progress(self) -> None:
        self.file_model.mark_queued(False)  # rows still in the queue get their results on later turns
        self.batch_progress.hide()
        self.batch_cancel_button.hide()

    def _choose_batch(self) -> None:
        folder_text = QFileDialog.getExistingDirectory(self, "Folder to Score", str(self._start_folder()))
        if not folder_text:
            return
        folder = Path(folder_text)
        # Default CSV next to the folder, not in it: it would otherwise be listed as an input.
        default_csv = folder.parent / f"{folder.name}_pneumo_scores.csv"
        csv_text, _ = QFileDialog.getSaveFileName(
            self,
            "Save Scores as CSV",
            str(default_csv),
            "CSV files (*.csv)",
            options=QFileDialog.Option.DontConfirmOverwrite,
        )
        if not csv_text:
            return
        output = Path(csv_text)
        resume = False
        if output.exists():
            choice = ask_resume(self, output)
            if choice is ResumeChoice.CANCEL:
                return
            resume = choice is ResumeChoice.RESUME
        self.start_batch([folder], output, resume=resume)

    # =========================================================================================
    # Exports
    # =========================================================================================
    def _export_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(display grey, overlay RGB) at the current settings; the overlay even when hidden."""
        state = self.state
        if state.image is None or state.explanation is None or state.explanation.cam is None:
            return None  # nothing yet, or a refused image (no map, not a result)
        options = self.overlay_controls.options()
        image = state.image
        source = image.raw if image.raw is not None else image.grey
        grey = apply_window_level(source, self._window_level, image.raw_inverted)
        # a map exists only for a scored (not refused) image, so the probability is there
        probability = cast(float, state.explanation.prediction.probability)
        cam = state.explanation.cam * np.float32(cam_strength(probability))
        rgb = render_overlay(grey, cam, options.colormap, options.opacity, options.cutoff)
        return grey, rgb

    def _refused_on_screen(self) -> bool:
        """A refused image is never exported as a result; says so in a dialog."""
        explanation = self.state.explanation
        if explanation is None or not explanation.prediction.refused:
            return False
        self._message("warning", "Not exported", f"This image was refused: {explanation.prediction.refusal_reason}.",
                      "There is no result to export. Use Score anyway first if you need one.")
        return True

    def export_overlay_png(self, path: Path) -> bool:
        if self._refused_on_screen():
            return False
        arrays = self._export_arrays()
        if arrays is None:
            self.statusBar().showMessage("Nothing to export yet: wait for the prediction", 5000)
            return False
        assert self.state.explanation is not None
        prediction = self.state.explanation.prediction
        options = self.overlay_controls.options()
        bar = array_to_qimage(colorbar(options.colormap, length=256, thickness=16, vertical=False))
        note = f"Drawn at {cam_strength(cast(float, prediction.probability)):.0%} strength (P(pneumonia))."
        try:
            save_png(annotated_overlay(array_to_qimage(arrays[1]), bar, prediction, note), Path(path))
        except ExportError as exc:
            self._message("warning", "Export failed", str(exc))
            return False
        self.statusBar().showMessage(f"Saved {path}", 5000)
        return True

    def export_pdf_report(self, path: Path) -> bool:
        if self._refused_on_screen():
            return False
        state = self.state
        arrays = self._export_arrays()
        if arrays is None or state.image is None or state.explanation is None:
            self.statusBar().showMessage("Nothing to export yet: wait for the prediction", 5000)
            return False
        grey, rgb = arrays
        options = self.overlay_controls.options()
        image = state.image
        note = "" if self._window_level.is_identity else (
            f"Display: window level {self._window_level.level}, width {self._window_level.width}"
            + (", inverted" if self._window_level.invert else "")
            + " (display only; the model read the original image)."
        )
        data = ReportData(
            file_path=image.path,
            image=array_to_qimage(grey),
            overlay=array_to_qimage(rgb),
            colorbar=array_to_qimage(colorbar(options.colormap, length=256, thickness=16, vertical=False)),
            prediction=state.explanation.prediction,
            card=self.model.card if self.model is not None else None,
            image_info=f"{image.width} × {image.height} px, {image.format}, {image.bit_depth}-bit · "
            f"overlay: {options.colormap}, opacity {options.opacity:.2f}, cut-off {options.cutoff:.2f}",
            display_note=note,
        )
        try:
            write_pdf_report(data, Path(path))
        except ExportError as exc:
            self._message("warning", "Export failed", str(exc))
            return False
        self.statusBar().showMessage(f"Saved {path}", 5000)
        return True

    def _suggested_export(self, suffix: str) -> str:
        path = self.state.path
        folder = self._start_folder()
        return str(folder / f"{path.stem if path else 'image'}{suffix}")

    def _choose_png(self) -> None:
        name, _ = QFileDialog.getSaveFileName(
            self, "Export Overlay", self._suggested_export("_gradcam.png"), "PNG images (*.png)"
        )
        if name:
            self.export_overlay_png(Path(name))

    def _choose_pdf(self) -> None:
        name, _ = QFileDialog.getSaveFileName(
            self, "Export Report", self._suggested_export("_report.pdf"), "PDF files (*.pdf)"
        )
        if name:
            self.export_pdf_report(Path(name))

    # =========================================================================================
    # Dialogs, About, state of actions, closing
    # =========================================================================================
    def _message(self, kind: str, title: str, text: str, informative: str = "") -> QMessageBox:
        self.last_message = (kind, title, text + (f"\n{informative}" if informative else ""))
        return self._keep(show_message(self, kind, title, text, informative))

    def show_about(self) -> QDialog:
        dialog = AboutDialog(self.model.card if self.model is not None else None, self.model_error, self)
        dialog.open()
        return self._keep(dialog)

    def _keep(self, dialog: _Dialog) -> _Dialog:
        """Hold a Python reference to an open non-modal dialog until it closes."""
        self._dialogs.append(dialog)
        dialog.finished.connect(lambda _result, d=dialog: self._dialogs.remove(d) if d in self._dialogs else None)
        return dialog

    def _update_actions(self) -> None:
        has_prediction = self.state.explanation is not None and self.state.explanation.cam is not None
        running = self.batch.running
        self.act_batch.setEnabled(self.model is not None and not running)
        self.act_cancel_batch.setEnabled(running)
        self.act_export_png.setEnabled(has_prediction)
        self.act_export_pdf.setEnabled(has_prediction)
        has_image = self.state.image is not None
        for action in (
            self.act_fit,
            self.act_actual,
            self.act_zoom_in,
            self.act_zoom_out,
            self.act_rotate,
            self.act_rotate_back,
            self.act_flip,
        ):
            action.setEnabled(has_image)
        has_rows = self.file_model.rowCount() > 0
        self.act_next.setEnabled(has_rows)
        self.act_previous.setEnabled(has_rows)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._closing = True
        self.batch.cancel()
        self.requester.cancel()
        self.settings.set_session(self._inputs, self.file_list.current_path())
        self.settings.save_window(self.saveGeometry(), self.saveState(), self.splitter.saveState())
        self.settings.set_overlay_options(self.overlay_controls.options())
        self.settings.sync()
        # Let running workers finish so none emits into a destroyed window.
        self.batch_pool.waitForDone(30_000)
        self.pool.waitForDone(30_000)
        super().closeEvent(event)
        # Results that arrived while waiting are shown/logged now, before the window goes for good.
        QApplication.sendPostedEvents()
        self.closed.emit()


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


REFUSED_MEANING = "Refused: no Grad-CAM map is drawn for an image the model does not read as a chest X-ray."


def overlay_meaning(label: str, probability: float, positive_label: str) -> str:
    """What the overlay colours mean for this result, in words."""
    strength = cam_strength(probability)
    if label == positive_label:
        return (
            f"{label}: colours mark the regions that most raised P(pneumonia); the map is drawn at "
            f"{strength:.0%} strength (its P)."
        )
    return (
        f"{label}: the model found little evidence of pneumonia. The map of that weak evidence is drawn at "
        f"{strength:.0%} strength (its P), so little or nothing is coloured; a colour here is not a finding."
    )
