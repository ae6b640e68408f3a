"""`pneumo-desktop listen` against real DICOM software: DCMTK's storescu/echoscu as the modality, Orthanc as
the PACS (DIMSE and STOW-RS), the listener as its own process, killed with SIGKILL mid-stream."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from pneumo_desktop.cli import main as cli_main
from pneumo_desktop.core.dicom_node.config import Peer
from pneumo_desktop.core.dicom_node.convert import dx_from_grey, new_identity
from pneumo_desktop.core.dicom_node.send import echo
from pneumo_desktop.core.imaging import load_image
from tests.dicom_node_support import (
    Orthanc,
    echoscu,
    free_port,
    require_tool,
    start_listener,
    start_orthanc,
    storescu,
    wait_until,
)

SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def dx_files(tmp_path_factory, sample_paths) -> list[Path]:
    folder = tmp_path_factory.mktemp("dx")
    files = []
    for index, path in enumerate(sample_paths[:6]):
        target = folder / f"{index}.dcm"
        dx_from_grey(load_image(path).grey, new_identity(f"P{index}")).save_as(target, enforce_file_format=True)
        files.append(target)
    return files


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


def _results_by_source(orthanc: Orthanc, studies: set[str]) -> dict[str, list[tuple[str, pydicom.Dataset]]]:
    """{source SOP Instance UID: [(SOP class, result dataset), ...]} for the results Orthanc holds in `studies`."""
    out: dict[str, list[tuple[str, pydicom.Dataset]]] = {}
    for iid in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{iid}/simplified-tags")
        if tags.get("StudyInstanceUID") not in studies or tags.get("SOPClassUID") not in (SR_CLASS, SC_CLASS):
            continue
        with urllib.request.urlopen(f"{orthanc.url}/instances/{iid}/file", timeout=30) as response:
            ds = pydicom.dcmread(BytesIO(response.read()))
        if ds.SOPClassUID == SC_CLASS:
            source = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        else:
            source = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
                .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        out.setdefault(source, []).append((ds.SOPClassUID, ds))
    return out


def _probability(sr: pydicom.Dataset) -> float:
    def walk(ds):
        for item in ds.get("ContentSequence", []):
            yield item
            yield from walk(item)

    [item] = [i for i in walk(sr) if i.ConceptNameCodeSequence[0].CodeMeaning == "Probability of pneumonia"]
    return float(item.MeasuredValueSequence[0].NumericValue)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_kill_mid_stream_and_restart_finish_every_instance_once(tmp_path, orthanc, dx_files, capsys):
    port = free_port()
    spool = tmp_path / "spool"
    args = ("--send-to", f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}", "-o", str(tmp_path / "results.csv"))
    listener = start_listener(spool, port, *args)
    assert echoscu(port).returncode == 0
    sender = subprocess.Popen([require_tool("storescu"), "-aet", "MODALITY", "-aec", "PNEUMO", "127.0.0.1", str(port),
                               *map(str, dx_files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # kill -9 as soon as the first instances are in (the rest are still being sent or scored)
    assert wait_until(lambda: sum(1 for _ in (spool / "incoming").glob("*.dcm")) + sum(
        1 for _ in (spool / "done").iterdir()) >= 2, timeout=60, interval=0.01)
    listener.kill()
    waiting_at_kill = sum(1 for _ in (spool / "incoming").glob("*.dcm"))
    sender.wait(60)
    # the kill interrupted work: instances received but not scored yet, and/or a transfer cut short
    assert waiting_at_kill > 0 or sender.returncode != 0
    restarted = start_listener(spool, port, *args, log_name="listen2.log")
    # the modality sends everything again (what it does for instances it got no success for); duplicates included
    result = storescu(port, dx_files)
    assert result.returncode == 0, result.stderr
    assert storescu(port, dx_files[:2]).returncode == 0  # the same SOP Instance UIDs once more
    studies = {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in dx_files}
    sources = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in dx_files]
    assert wait_until(lambda: sum(len(v) for v in _results_by_source(orthanc, studies).values()) >= 12, timeout=90), \
        restarted.log()
    assert wait_until(lambda: not any((spool / "outbox").rglob("*.dcm")) and not any(
        (spool / "incoming").iterdir()), timeout=30)
    log_text = restarted.log()
    assert restarted.stop() == 0

    by_source = _results_by_source(orthanc, studies)
    assert sorted(by_source) == sorted(sources)
    for uid in sources:
        classes = sorted(sop_class for sop_class, _ in by_source[uid])
        assert classes == sorted([SR_CLASS, SC_CLASS]), f"{uid}: {classes}"
    rows = _csv_rows(tmp_path / "results.csv")
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(sources)  # one row per instance
    assert {r["sender_ae"] for r in rows} == {"MODALITY"} and {r["status"] for r in rows} <= {"scored", "refused"}
    assert "received before: not scored again" in log_text

    # the SR's probability is what `pneumo-desktop predict` says for the same pixels
    for path, uid in zip(dx_files, sources):
        [sr] = [ds for sop_class, ds in by_source[uid] if sop_class == SR_CLASS]
        capsys.readouterr()
        assert cli_main(["predict", str(path), "--json"]) == 0
        predicted = json.loads(capsys.readouterr().out)
        if predicted["probability"] is None:
            continue  # refused: the SR says so (checked in test_dicom_node.py)
        assert _probability(sr) == pytest.approx(predicted["probability"], abs=1e-4)
        row = next(r for r in rows if r["sop_instance_uid"] == uid)
        assert float(row["probability"]) == pytest.approx(predicted["probability"], abs=1e-4)


def test_a_down_destination_keeps_results_on_disk_until_it_is_up(tmp_path, dx_files):
    port, pacs_port = free_port(), free_port()
    spool = tmp_path / "spool"
    config = tmp_path / "node.toml"  # the settings file, with a short back-off for the test
    config.write_text(f'send_to = ["pacs"]\nretry_max_s = 1.0\n\n[[peers]]\nname = "pacs"\nae_title = "LATE"\n'
                      f'host = "127.0.0.1"\nport = {pacs_port}\n')
    listener = start_listener(spool, port, "--config", str(config))
    assert storescu(port, dx_files[:2]).returncode == 0
    assert wait_until(lambda: len(list((spool / "outbox").rglob("*.dcm"))) == 4, timeout=60), listener.log()
    # the sender found the PACS down and retries with back-off (waited for: the outbox can fill before the
    # first failed attempt is logged)
    assert wait_until(lambda: "next try in" in listener.log(), timeout=30), listener.log()
    listener.kill()  # results were queued on disk, not in memory
    late = start_orthanc(tmp_path / "late", dicom_port=pacs_port)
    try:
        restarted = start_listener(spool, port, "--config", str(config), log_name="listen2.log")
        assert wait_until(lambda: len(late.get("/instances")) == 4, timeout=60), restarted.log()
        assert wait_until(lambda: not any((spool / "outbox").rglob("*.dcm")), timeout=30)
        assert restarted.stop() == 0
    finally:
        late.stop()


def _scu_store(port: int, ds: Dataset, calling: str = "MODALITY") -> int | None:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if status else None
    finally:
        assoc.release()


def test_security_limits_and_bad_input(tmp_path, orthanc, dx_files, sample_paths):
    port = free_port()
    spool = tmp_path / "spool"
    listener = start_listener(spool, port, "--allow", "MODALITY", "--stow", f"{orthanc.url}/dicom-web",
                              "--max-instance-mb", "2")
    # unknown calling AE: the association is rejected
    assert echoscu(port, calling="STRANGER").returncode != 0
    assert echoscu(port).returncode == 0
    good = pydicom.dcmread(dx_files[0])
    # a dataset without pixel data, and one whose SOP Instance UID is not a UID: failure statuses
    no_pixels = pydicom.dcmread(dx_files[1])
    del no_pixels.PixelData
    assert _scu_store(port, no_pixels) == 0xA900
    bad_uid = pydicom.dcmread(dx_files[1])
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom says so, and sends it anyway
        bad_uid.SOPInstanceUID = "1.2.abc"
        assert _scu_store(port, bad_uid) in (0xA900, 0xC000)
    # over the instance size limit (2 MB): out of resources
    big = pydicom.dcmread(dx_files[1])
    big.SOPInstanceUID = "1.2.3.4.5.6"
    big.Rows, big.Columns = 1600, 1600
    big.PixelData = bytes(1600 * 1600)
    assert _scu_store(port, big) == 0xA700
    # not an X-ray class: no presentation context is accepted for it
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
    assert not assoc.is_established or not assoc.accepted_contexts
    if assoc.is_established:
        assoc.release()
    # the listener still serves: a good instance goes through, and its SR reaches Orthanc by STOW-RS
    assert _scu_store(port, good) == 0x0000
    # a Secondary Capture in JPEG Baseline, as DCMTK's img2dcm makes it from a sample, is accepted too
    sc_file = tmp_path / "sc.dcm"
    subprocess.run([require_tool("img2dcm"), str(sample_paths[0]), str(sc_file)], check=True, timeout=60)
    sc = pydicom.dcmread(sc_file)
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    sent = subprocess.run([require_tool("storescu"), "-xy", "-aet", "MODALITY", "-aec", "PNEUMO", "127.0.0.1",
                           str(port), str(sc_file)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    for source in (good, sc):
        study = source.StudyInstanceUID
        assert wait_until(lambda study=study, uid=source.SOPInstanceUID: len(
            _results_by_source(orthanc, {study}).get(uid, [])) == 2, timeout=60), listener.log()
    assert listener.stop() == 0
    log_text = listener.log()
    assert "no pixel data" in log_text and "over the instance limit" in log_text and "rejected" in log_text


def test_full_spool_refuses_with_out_of_resources(tmp_path, dx_files):
    port = free_port()
    listener = start_listener(tmp_path / "spool", port, "--spool-max-mb", "0.5")  # each test image is ~1 MB
    try:
        assert _scu_store(port, pydicom.dcmread(dx_files[0])) == 0xA700
        assert echoscu(port).returncode == 0  # still serving
    finally:
        assert listener.stop() == 0
    assert "the spool is full" in listener.log()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A CA, and a server and a client certificate it signed (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", cwd=folder)
    return {n: folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_tls_listener_answers_only_tls_clients_with_a_certificate(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    port = free_port()
    listener = start_listener(tmp_path / "spool", port, "--tls-cert", str(tls["server.pem"]),
                              "--tls-key", str(tls["server.key"]), "--tls-ca", str(tls["ca.pem"]))
    try:
        peer = Peer("PNEUMO", "127.0.0.1", port, tls_ca=tls["ca.pem"], tls_cert=tls["client.pem"],
                    tls_key=tls["client.key"])
        assert "answered" in echo(peer, "MODALITY")
        with pytest.raises(ConnectionError):
            echo(Peer("PNEUMO", "127.0.0.1", port), "MODALITY")  # no TLS
        with pytest.raises(ConnectionError):
            echo(Peer("PNEUMO", "127.0.0.1", port, tls_ca=tls["ca.pem"]), "MODALITY")  # TLS, no client certificate
    finally:
        assert listener.stop() == 0
