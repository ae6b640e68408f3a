"""`pneumo-desktop listen`'s refusals: each bad start says why on one line and exits with its status."""

from __future__ import annotations

import socket

import pytest

from pneumo_desktop.cli import main
from pneumo_desktop.cli.listen import EXIT_LOCKED, EXIT_PORT, EXIT_USAGE
from pneumo_desktop.core.dicom_node.spool import MB, Spool


def test_help_lists_the_options(capsys):
    assert main(["listen", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--port", "--ae-title", "--allow", "--send-to", "--stow", "--spool", "--profile", "--tls-cert",
                   "--tls-ca"):
        assert option in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ae-title", "FAR_TOO_LONG_FOR_DICOM"], "not a DICOM AE title"),
        (["--send-to", "PACS@nowhere"], "expected AE@HOST:PORT"),
        (["--tls-cert", "cert.pem"], "tls_cert and tls_key go together"),
        (["--port", "0"], "not between 1 and 65535"),
        (["--profile", "no-such-profile"], "no-such-profile"),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, args, message):
    assert main(["listen", "--spool", str(tmp_path / "spool"), *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_config_file_exits_2(tmp_path, capsys):
    config = tmp_path / "node.toml"
    config.write_text("port = [unclosed\n")
    assert main(["listen", "--config", str(config)]) == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err


def test_spool_in_use_exits_5(tmp_path, capsys):
    spool = Spool(tmp_path / "spool", 10 * MB, 0)  # another listener holds it
    try:
        assert main(["listen", "--spool", str(tmp_path / "spool"), "--port", "1"]) == EXIT_LOCKED
    finally:
        spool.close()
    assert "another listener is using the spool" in capsys.readouterr().err


def test_port_in_use_exits_4(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["listen", "--spool", str(tmp_path / "spool"), "--bind", "127.0.0.1", "--port", str(port)])
    assert code == EXIT_PORT
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    # the spool was released: a listener can start on it now
    Spool(tmp_path / "spool", 10 * MB, 0).close()
