"""The main window: file list | image view | prediction and overlay controls.

The window is the frame: it builds the widgets, the menus, the toolbar and the status bar, and hands
everything a user can do to the controllers in `controllers/` (one module per area: files, batch,
site, exports, view, display, model), which get the window through the typed `WindowHost` interface.
"Score folder" is controllers/batch_actions.py, "Export Report as PDF…" controllers/export_actions.py, and so on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, QSize, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDragMoveEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QStyle,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from .. import RESEARCH_USE_STATEMENT
from .controllers.batch_actions import BatchActions
from .controllers.display import APP_TITLE, DisplayController
from .controllers.export_actions import ExportActions
from .controllers.file_actions import FileActions
from .controllers.host import DialogT, WindowHost, make_action
from .controllers.model import ModelController
from .controllers.site_actions import SiteActions
from .controllers.view_actions import ViewActions
from .dialogs import AboutDialog, show_message
from .file_list import FILTERS, FileListModel, FileListView
from .icons import app_icon
from .image_view import ImageView
from .model_loading import ModelLoader, default_model_loader
from .overlay_controls import DisplayControls, OverlayControls
from .pacs_actions import CurrentResult, PacsActions
from .prediction_panel import PredictionPanel
from .settings import SettingsStore

if TYPE_CHECKING:
    from ..core.runtime import PneumoniaModel

log = logging.getLogger(__name__)

DEFAULT_SIZE = QSize(1280, 800)

# Card-like sections for the right panel (fonts set here do not propagate to child widgets).
PANEL_STYLE = """
QGroupBox { font-weight: 600; border: 1px solid #d5d9de; border-radius: 6px; margin-top: 12px;
            padding: 10px 8px 8px 8px; background: palette(base); }
QGroupBox::title { subcontrol-origin: margin; subcontrol-position: top left; left: 8px; padding: 0 4px; }
"""


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
        self.last_message: tuple[str, str, str] | None = None  # (kind, title, text): for tests and logs
        self._dialogs: list[QWidget] = []
        self._build_widgets()  # the widgets, before the controllers that drive them

        # Everything a user can do, by area; each controller sees this window only as a WindowHost.
        host: WindowHost = self
        self.display = DisplayController(host, lambda: self.models.busy)
        self.models = ModelController(host, self.display)
        self.file_actions = FileActions(host, self.display, self.models.load)
        self.batch_actions = BatchActions(host, self.file_actions)
        self.site_actions = SiteActions(host, self.models)
        self.export_actions = ExportActions(host, self.display)
        self.view_actions = ViewActions(host, self.display)
        for source, relay in (
            (self.models.modelReady, self.modelReady), (self.models.modelFailed, self.modelFailed),
            (self.display.imageShown, self.imageShown), (self.display.predictionShown, self.predictionShown),
            (self.display.fileFailed, self.fileFailed), (self.display.overlayRendered, self.overlayRendered),
            (self.batch_actions.finished, self.batchFinished), (self.batch_actions.failed, self.batchFailed),
        ):
            source.connect(relay.emit)

        self._build_menus_and_toolbar()
        self._build_status_bar()
        self.filter_combo.currentTextChanged.connect(self.file_list.proxy.set_filter)
        self._restore_settings()
        self.setWindowTitle(APP_TITLE)
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.update_actions()

        if model is not None:
            self.models.set_model(model)
        else:
            self.models.load(model_loader or default_model_loader())

    # =========================================================================================
    # The window's own API (the command line, scripts and tests drive the app through these)
    # =========================================================================================
    def open_paths(self, paths: Sequence[Path | str], exclude: Sequence[Path] = (), *, add: bool = False) -> int:
        """Open files and/or folders; see FileActions.open_paths."""
        return self.file_actions.open_paths(paths, exclude, add=add)

    def restore_session(self) -> int:
        return self.file_actions.restore_session()

    def start_batch(self, inputs: Sequence[Path] | Path, output_csv: Path, *, resume: bool = False) -> bool:
        """Score a folder to a CSV in the background; see BatchActions.start_batch."""
        return self.batch_actions.start_batch(inputs, output_csv, resume=resume)

    def cancel_batch(self) -> None:
        self.batch_actions.cancel()

    def rendering_idle(self) -> bool:
        """True when the view shows the current settings (no re-blend scheduled or running)."""
        return self.display.rendering_idle()

    # =========================================================================================
    # WindowHost: what the controllers use
    # =========================================================================================
    def widget(self) -> QWidget:
        return self

    def _current_result(self) -> CurrentResult:
        """What the PACS actions may send: the image on screen and its result."""
        state = self.display.state
        return state.path, state.image, state.explanation

    def message(self, kind: str, title: str, text: str, informative: str = "") -> QMessageBox:
        self.last_message = (kind, title, text + (f"\n{informative}" if informative else ""))
        return self.keep(show_message(self, kind, title, text, informative))

    def keep(self, dialog: DialogT) -> DialogT:
        """Hold a Python reference to an open non-modal dialog until it closes."""
        self._dialogs.append(dialog)
        dialog.finished.connect(lambda _result, d=dialog: self._dialogs.remove(d) if d in self._dialogs else None)
        return dialog

    def update_actions(self) -> None:
        self.batch_actions.update_actions()
        self.export_actions.update_actions()
        self.view_actions.update_actions()

    def start_folder(self) -> Path:
        folder = self.settings.last_folder()
        return folder if folder is not None and folder.is_dir() else Path.home()

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
        # For the status bar (_build_status_bar places them; the controllers fill them in)
        self.zoom_label = QLabel("")
        self.pixel_label = QLabel("")
        self.model_status_label = QLabel("")

    def _build_menus_and_toolbar(self) -> None:
        files, batch, site = self.file_actions, self.batch_actions, self.site_actions
        exports, view = self.export_actions, self.view_actions
        std = self.style().standardIcon
        self.act_quit = make_action(self, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_about = make_action(
            self, "&About Pneumo Desktop", self.show_about, icon=std(QStyle.StandardPixmap.SP_MessageBoxInformation)
        )
        self.act_about_qt = make_action(self, "About &Qt", lambda: QMessageBox.aboutQt(self))

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for action in (files.act_open, files.act_open_folder, files.act_recursive):
            file_menu.addAction(action)
        file_menu.addMenu(files.recent_menu)
        file_menu.addSeparator()
        for action in (batch.act_batch, batch.act_cancel_batch, site.act_evaluate, site.act_calibrate):
            file_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(exports.act_export_png)
        file_menu.addAction(exports.act_export_pdf)
        # DICOM (gui/pacs_actions.py): Send Results to PACS…, PACS Peers…
        self.pacs = PacsActions(self, self.pool, self._current_result, self.message)
        file_menu.addActions(self.pacs.actions())
        file_menu.addSeparator()
        file_menu.addAction(files.act_open_model)
        file_menu.addSeparator()
        file_menu.addAction(self.act_quit)

        view_menu = menu.addMenu("&View")
        for group in (
            (view.act_fit, view.act_actual, view.act_zoom_in, view.act_zoom_out),
            (view.act_invert, view.act_reset_wl),
            (view.act_rotate, view.act_rotate_back, view.act_flip, view.act_full_screen),
            (view.act_next, view.act_previous),
            (view.act_overlay, view.act_side),
        ):
            if view_menu.actions():
                view_menu.addSeparator()
            for action in group:
                view_menu.addAction(action)

        help_menu = menu.addMenu("&Help")
        help_menu.addAction(files.act_samples)
        help_menu.addAction(view.act_shortcuts)
        help_menu.addSeparator()
        help_menu.addAction(self.act_about)
        help_menu.addAction(self.act_about_qt)

        toolbar = QToolBar("Main", self)
        toolbar.setObjectName("mainToolbar")
        toolbar.setMovable(False)
        toolbar.setIconSize(QSize(22, 22))
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for tools in (
            (files.act_open, files.act_open_folder),
            (batch.act_batch,),
            (view.act_fit, view.act_actual, view.act_invert),
            (view.act_overlay, view.act_side),
            (exports.act_export_png, exports.act_export_pdf),
        ):
            for action in tools:
                toolbar.addAction(action)
            toolbar.addSeparator()
        self.toolbar = toolbar
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.zoom_label.setMinimumWidth(70)
        self.pixel_label.setObjectName("pixelReadout")
        self.pixel_label.setMinimumWidth(200)
        self.model_status_label.setObjectName("modelStatus")
        # Always visible, whatever else the status bar is saying.
        self.research_label = QLabel("Research use only — not a medical device")
        self.research_label.setObjectName("researchUse")
        self.research_label.setToolTip(RESEARCH_USE_STATEMENT)
        self.research_label.setStyleSheet("color: #7a4a00; padding: 0 6px;")
        for widget in (self.batch_actions.progress_bar, self.batch_actions.cancel_button, self.pixel_label,
                       self.zoom_label, self.model_status_label, self.research_label):
            bar.addPermanentWidget(widget)
        self.batch_actions.progress_bar.hide()
        self.batch_actions.cancel_button.hide()

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
    # Help ▸ About, drops, closing
    # =========================================================================================
    def show_about(self) -> QDialog:
        dialog = AboutDialog(self.model.card if self.model is not None else None, self.model_error, self)
        dialog.open()
        return self.keep(dialog)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            # Open after the drop returns so the source application is not kept waiting.
            QTimer.singleShot(0, lambda: self.open_paths(paths, add=True))

    def closeEvent(self, event: QCloseEvent) -> None:
        self.batch_actions.closing = True
        self.batch_actions.runner.cancel()
        self.display.requester.cancel()
        self.file_actions.save_session()
        self.settings.save_window(self.saveGeometry(), self.saveState(), self.splitter.saveState())
        self.settings.set_overlay_options(self.overlay_controls.options())
        self.settings.sync()
        # Let running workers finish so none emits into a destroyed window.
        self.batch_actions.pool.waitForDone(30_000)
        self.pool.waitForDone(30_000)
        super().closeEvent(event)
        # Results that arrived while waiting are shown/logged now, before the window goes for good.
        QApplication.sendPostedEvents()
        self.closed.emit()
