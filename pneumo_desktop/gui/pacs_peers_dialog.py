"""Settings for the DICOM peers the window sends results to: AE title, host, port, TLS files, and an Echo button.

The peers are saved as [[peers]] in the node's TOML file (core.dicom_node.config), the same file
`pneumo-desktop listen` reads, so a peer set up here can also be a `send_to` of the listener.
The echo runs off the GUI thread (gui.background.run_in_background).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QThreadPool
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.dicom_node.config import NodeConfig, NodeConfigError, Peer, check_ae_title, load_config, save_peers
from ..core.dicom_node.send import echo
from .background import run_in_background


class PacsPeersDialog(QDialog):
    """Edit the list of peers; Echo checks the selected one with a C-ECHO; Save writes the TOML file."""

    def __init__(self, pool: QThreadPool, config_path: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS Peers")
        self.pool, self.config_path = pool, config_path
        try:
            self.config = load_config(config_path)
        except NodeConfigError as exc:  # a broken file: start empty, say why, never overwrite it silently
            self.config = NodeConfig()
            self.load_error = str(exc)
        else:
            self.load_error = ""
        self.peers: list[Peer] = list(self.config.peers)
        self._row = -1

        self.list = QListWidget()
        self.list.setObjectName("peerList")
        self.list.currentRowChanged.connect(self._select)
        add, remove = QPushButton("Add"), QPushButton("Remove")
        add.clicked.connect(self.add_peer)
        remove.clicked.connect(self.remove_peer)

        self.name, self.ae_title, self.host = QLineEdit(), QLineEdit(), QLineEdit()
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(104)
        self.tls_ca, self.tls_cert, self.tls_key = QLineEdit(), QLineEdit(), QLineEdit()
        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("AE title", self.ae_title)
        form.addRow("Host", self.host)
        form.addRow("Port", self.port)
        tls_box = QGroupBox("TLS (leave empty for none)")
        tls_form = QFormLayout(tls_box)
        for label, edit in (("CA certificate", self.tls_ca), ("Our certificate", self.tls_cert),
                            ("Our key", self.tls_key)):
            tls_form.addRow(label, self._with_browse(edit))
        for edit in (self.name, self.ae_title, self.host, self.tls_ca, self.tls_cert, self.tls_key):
            edit.editingFinished.connect(self._store_form)
        self.port.valueChanged.connect(lambda _v: self._store_form())

        self.echo_button = QPushButton("Echo")
        self.echo_button.setToolTip("Check the peer answers (DICOM C-ECHO)")
        self.echo_button.clicked.connect(self.echo_selected)
        self.status = QLabel(self.load_error or f"This node calls as AE title {self.config.ae_title}.")
        self.status.setObjectName("echoStatus")
        self.status.setWordWrap(True)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)

        left = QVBoxLayout()
        left.addWidget(self.list)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(remove)
        left.addLayout(row)
        right = QVBoxLayout()
        right.addLayout(form)
        right.addWidget(tls_box)
        right.addWidget(self.echo_button)
        right.addWidget(self.status)
        right.addStretch(1)
        body = QHBoxLayout()
        body.addLayout(left, 1)
        body.addLayout(right, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(body)
        layout.addWidget(buttons)
        self._refresh_list()
        self.resize(640, 380)

    def _with_browse(self, edit: QLineEdit) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit)
        button = QPushButton("…")
        button.setFixedWidth(28)

        def browse() -> None:
            path, _ = QFileDialog.getOpenFileName(self, "PEM file", "", "PEM files (*.pem *.crt *.key);;All files (*)")
            if path:
                edit.setText(path)
                self._store_form()

        button.clicked.connect(browse)
        row.addWidget(button)
        return box

    # ------------------------------------------------------------------ list and form

    def _refresh_list(self, select: int = 0) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        self.list.addItems([p.label for p in self.peers])
        self.list.blockSignals(False)
        self._row = -1
        if self.peers:
            self.list.setCurrentRow(min(select, len(self.peers) - 1))
            self._select(self.list.currentRow())

    def _select(self, row: int) -> None:
        self._row = row
        if not 0 <= row < len(self.peers):
            return
        peer = self.peers[row]
        self.name.setText(peer.name)
        self.ae_title.setText(peer.ae_title)
        self.host.setText(peer.host)
        self.port.blockSignals(True)
        self.port.setValue(peer.port)
        self.port.blockSignals(False)
        for edit, value in ((self.tls_ca, peer.tls_ca), (self.tls_cert, peer.tls_cert), (self.tls_key, peer.tls_key)):
            edit.setText("" if value is None else str(value))

    def form_peer(self) -> Peer:
        """The peer the form describes; raises NodeConfigError when it is not valid."""
        if not self.host.text().strip():
            raise NodeConfigError("a peer needs a host")

        def path(edit: QLineEdit) -> Path | None:
            return Path(edit.text().strip()) if edit.text().strip() else None

        peer = Peer(check_ae_title(self.ae_title.text()), self.host.text().strip(), self.port.value(),
                    name=self.name.text().strip(), tls_ca=path(self.tls_ca), tls_cert=path(self.tls_cert),
                    tls_key=path(self.tls_key))
        if (peer.tls_cert is None) != (peer.tls_key is None):
            raise NodeConfigError("our certificate and our key go together")
        return peer

    def _store_form(self) -> None:
        if not 0 <= self._row < len(self.peers):
            return
        try:
            self.peers[self._row] = self.form_peer()
        except NodeConfigError as exc:
            self.status.setText(str(exc))
            return
        self.list.item(self._row).setText(self.peers[self._row].label)

    def add_peer(self) -> None:
        self.peers.append(Peer("PACS", "localhost", 104, name=f"peer {len(self.peers) + 1}"))
        self._refresh_list(len(self.peers) - 1)

    def remove_peer(self) -> None:
        if 0 <= self._row < len(self.peers):
            del self.peers[self._row]
            self._refresh_list(self._row)

    # ------------------------------------------------------------------ echo and save

    def echo_selected(self) -> None:
        try:
            peer = self.form_peer()
        except NodeConfigError as exc:
            self.status.setText(str(exc))
            return
        self.echo_button.setEnabled(False)
        self.status.setText(f"Echoing {peer.label}…")
        calling = self.config.ae_title
        run_in_background(
            self.pool, lambda _progress: echo(peer, calling),
            on_result=self.status.setText,
            on_error=lambda exc: self.status.setText(f"No answer: {exc}"),
            on_done=lambda: self.echo_button.setEnabled(True),
            owner=self,
        )

    def save(self) -> None:
        self._store_form()
        try:
            save_peers(self.peers, self.config_path)
        except (NodeConfigError, OSError) as exc:
            self.status.setText(f"Not saved: {exc}")
            return
        self.accept()
