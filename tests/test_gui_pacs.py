"""The window's PACS peers dialog (Echo against a real Orthanc) and the "Send Results to PACS" action."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtWidgets import QWidget

from pneumo_desktop.core.dicom_node.config import Peer, load_config, save_peers
from pneumo_desktop.core.dicom_node.convert import dx_from_grey, new_identity
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.runtime import PneumoniaModel
from pneumo_desktop.gui.pacs_actions import PacsActions
from pneumo_desktop.gui.pacs_peers_dialog import PacsPeersDialog
from tests.dicom_node_support import free_port, start_orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-gui"))
    yield server
    server.stop()


@pytest.fixture
def pool():
    threads = QThreadPool()
    yield threads
    threads.waitForDone(30_000)


def test_peers_dialog_echoes_and_saves(qtbot, tmp_path, orthanc, pool):
    config = tmp_path / "dicom_node.toml"
    config.write_text('ae_title = "READER1"\n')
    dialog = PacsPeersDialog(pool, config)
    qtbot.addWidget(dialog)
    dialog.add_peer()
    dialog.name.setText("orthanc")
    dialog.ae_title.setText(orthanc.ae_title)
    dialog.host.setText("127.0.0.1")
    dialog.port.setValue(orthanc.dicom_port)
    qtbot.mouseClick(dialog.echo_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "answered" in dialog.status.text(), timeout=30_000)
    assert dialog.echo_button.isEnabled()

    dialog.port.setValue(free_port())  # nothing listens there
    dialog.echo_selected()
    qtbot.waitUntil(lambda: dialog.status.text().startswith("No answer"), timeout=30_000)

    dialog.port.setValue(orthanc.dicom_port)
    dialog.ae_title.setText("NOT\\VALID")  # a backslash is not allowed in an AE title
    dialog.echo_selected()
    assert "not a DICOM AE title" in dialog.status.text()
    dialog.ae_title.setText(orthanc.ae_title)
    dialog.save()
    saved = load_config(config)
    assert saved.ae_title == "READER1"  # the file's other settings are kept
    assert saved.peers == (Peer(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, name="orthanc"),)


def test_send_results_to_pacs_puts_sr_and_sc_in_the_study(qtbot, tmp_path, orthanc, pool, sample_paths,
                                                          bundled_model_dir):
    model = PneumoniaModel.load(bundled_model_dir)
    identity = new_identity("GUI-1")
    dx = tmp_path / "dx.dcm"
    dx_from_grey(load_image(sample_paths[0]).grey, identity).save_as(dx, enforce_file_format=True)
    image = load_image(dx)
    explanation = model.explain(image)
    config = tmp_path / "dicom_node.toml"
    save_peers([Peer(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, name="orthanc")], config)
    messages: list[tuple[str, str, str]] = []
    current: list[tuple[Path | None, object, object]] = [(dx, image, explanation)]
    parent = QWidget()
    qtbot.addWidget(parent)
    actions = PacsActions(parent, pool, lambda: current[0], lambda k, t, x: messages.append((k, t, x)), config)
    assert [a.text() for a in actions.actions()] == ["Send Results to &PACS…", "PACS P&eers…"]

    actions.send_action.trigger()  # one peer configured: sent to it
    qtbot.waitUntil(lambda: bool(messages), timeout=60_000)
    assert messages[-1][0] == "information", messages
    study = [s for s in orthanc.get("/studies")
             if orthanc.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] == identity.study_instance_uid]
    assert len(study) == 1
    modalities = sorted(orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"]
                        for s in orthanc.get(f"/studies/{study[0]}")["Series"])
    assert modalities == ["OT", "SR"]

    # a JPEG has no study to join: a clear message, nothing sent
    jpeg = load_image(sample_paths[1])
    current[0] = (sample_paths[1], jpeg, model.explain(jpeg))
    actions.send(Peer(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port))
    qtbot.waitUntil(lambda: len(messages) == 2, timeout=30_000)
    assert messages[-1][0] == "warning" and "not a DICOM image" in messages[-1][2]


def test_main_window_sends_the_image_on_screen(qtbot, tmp_path, orthanc, sample_paths, bundled_model_dir):
    """The File menu's action, wired in the real window: the open DICOM image's SR and SC reach Orthanc."""
    from pneumo_desktop.gui.main_window import MainWindow
    from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings

    save_peers([Peer(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, name="orthanc")])  # the user's config
    identity = new_identity("GUI-WINDOW")
    dx = tmp_path / "window.dcm"
    dx_from_grey(load_image(sample_paths[2]).grey, identity).save_as(dx, enforce_file_format=True)
    window = MainWindow(model=PneumoniaModel.load(bundled_model_dir),
                        settings=SettingsStore(ini_qsettings(tmp_path / "settings.ini")))
    qtbot.addWidget(window)
    window.show()
    file_menu = window.menuBar().actions()[0].menu()
    assert window.pacs.send_action in file_menu.actions() and window.pacs.peers_action in file_menu.actions()
    with qtbot.waitSignal(window.predictionShown, timeout=30_000):
        window.open_paths([dx])
    window.pacs.send_action.trigger()
    qtbot.waitUntil(lambda: window.pacs.last_report is not None, timeout=60_000)
    assert window.last_message is not None and window.last_message[0] == "information"
    assert window.pacs.last_report is not None and window.pacs.last_report.study_uid == identity.study_instance_uid
    found = orthanc.post_find(identity.study_instance_uid)
    assert sorted(found) == ["OT", "SR"]
    window.pool.waitForDone(30_000)
