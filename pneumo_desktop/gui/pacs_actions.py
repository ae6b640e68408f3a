"""The window's DICOM actions: "Send Results to PACS…" (the SR and the heat-map SC of the image on screen) and
"PACS Peers…" (the settings dialog). Built from callables, so the window only says what is on screen.

Results go into the source's study, so only a DICOM image can be sent (a JPEG has no study to join).
Building the objects and the C-STORE run off the GUI thread (gui.background.run_in_background).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QThreadPool
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QInputDialog, QWidget

from ..core.errors import PneumoError
from ..core.imaging import LoadedImage
from ..core.runtime import Explanation
from .background import run_in_background

if TYPE_CHECKING:  # the DICOM node's modules load when the user first uses these actions, not at start-up
    from ..core.dicom_node.config import Peer
    from .pacs_peers_dialog import PacsPeersDialog

log = logging.getLogger(__name__)

# What is on screen: (path, image, explanation), any of them None when there is nothing to send.
CurrentResult = tuple[Path | None, LoadedImage | None, Explanation | None]
Message = Callable[[str, str, str], object]  # (kind: information|warning|critical, title, text)


class NotSendableError(PneumoError):
    """The image on screen cannot be sent as DICOM results (no result yet, or not a DICOM image)."""


@dataclass(frozen=True)
class SendReport:
    peer: Peer
    sent: int
    failed: list[str]
    study_uid: str

    def text(self) -> str:
        if not self.failed:
            return (f"Sent the structured report and the heat-map image to {self.peer.label} "
                    f"(study {self.study_uid}).")
        return f"{self.peer.label}: {self.sent} of {self.sent + len(self.failed)} sent; " + "; ".join(self.failed)


def send_results(current: CurrentResult, peer: Peer, calling_ae: str) -> SendReport:
    """Build the SR and the SC of the current result and C-STORE them to `peer` (blocking: a worker runs it)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from ..core.dicom_node.results_dicom import build_results, encode  # loaded when first sending

    path, image, explanation = current
    if path is None or image is None or explanation is None:
        raise NotSendableError("there is no result on screen to send yet")
    if image.format != "DICOM":
        raise NotSendableError(f"{path.name} is not a DICOM image: its results have no study to join in the PACS")
    try:
        source = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise NotSendableError(f"{path.name} cannot be read as DICOM: {exc}") from None
    if "StudyInstanceUID" not in source or "SOPInstanceUID" not in source:
        raise NotSendableError(f"{path.name} has no study or instance UID")
    objects = build_results(source, image.grey, explanation)
    from ..core.dicom_node.send import Outcome, send_dimse

    with tempfile.TemporaryDirectory(prefix="pneumo-send-") as folder:
        files = []
        for name, ds in (("sr", objects.sr), ("sc", objects.sc)):
            target = Path(folder) / f"{name}.dcm"
            target.write_bytes(encode(ds))
            files.append(target)
        results = send_dimse(peer, calling_ae, files)
    failed = [f"{r.path.stem.upper()}: {r.detail}" for r in results if r.outcome is not Outcome.SENT]
    return SendReport(peer, len(results) - len(failed), failed, str(source.StudyInstanceUID))


class PacsActions(QObject):
    """The two actions; `current()` says what is on screen, `message` shows the outcome to the user."""

    def __init__(self, parent: QWidget, pool: QThreadPool, current: Callable[[], CurrentResult],
                 message: Message, config_path: Path | None = None) -> None:
        super().__init__(parent)
        self._parent, self.pool, self.current, self.message = parent, pool, current, message
        self.config_path = config_path
        self.send_action = QAction("Send Results to &PACS…", parent)
        self.send_action.setToolTip("Send the structured report and the heat-map image into the study on a PACS")
        self.send_action.triggered.connect(self.choose_and_send)
        self.peers_action = QAction("PACS P&eers…", parent)
        self.peers_action.setToolTip("DICOM peers to send results to (AE title, host, port, TLS), with Echo")
        self.peers_action.triggered.connect(self.open_peers)
        self.last_report: SendReport | None = None
        self.dialog: PacsPeersDialog | None = None

    def actions(self) -> list[QAction]:
        return [self.send_action, self.peers_action]

    def open_peers(self) -> PacsPeersDialog:
        from .pacs_peers_dialog import PacsPeersDialog

        self.dialog = PacsPeersDialog(self.pool, self.config_path, self._parent)
        self.dialog.open()
        return self.dialog

    def choose_and_send(self) -> None:
        from ..core.dicom_node.config import NodeConfigError, load_config

        try:
            config = load_config(self.config_path)
        except NodeConfigError as exc:
            self.message("warning", "Send to PACS", str(exc))
            return
        peers = list(config.peers)
        if not peers:
            self.message("information", "Send to PACS", "No PACS is set up yet: add one in PACS Peers….")
            self.open_peers()
            return
        peer = peers[0]
        if len(peers) > 1:
            labels = [p.label for p in peers]
            label, ok = QInputDialog.getItem(self._parent, "Send to PACS", "Send the results to:", labels, 0, False)
            if not ok:
                return
            peer = peers[labels.index(label)]
        self.send(peer, config.ae_title)

    def send(self, peer: Peer, calling_ae: str = "PNEUMO") -> None:
        current = self.current()
        self.send_action.setEnabled(False)

        def done(report: SendReport) -> None:
            self.last_report = report
            self.message("information" if not report.failed else "warning", "Send to PACS", report.text())

        def failed(exc: BaseException) -> None:
            text = exc.reason if isinstance(exc, PneumoError) else f"{type(exc).__name__}: {exc}"
            self.message("warning", "Send to PACS", f"Not sent: {text}")

        run_in_background(self.pool, lambda _progress: send_results(current, peer, calling_ae),
                          on_result=done, on_error=failed, on_done=lambda: self.send_action.setEnabled(True),
                          owner=self)
