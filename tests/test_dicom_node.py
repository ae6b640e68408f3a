"""The DICOM node's core: settings, the durable spool, the results CSV, and the SR / SC objects (dciodvfy)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pneumo_desktop.core.dicom_node.config import NodeConfig, NodeConfigError, Peer, apply, load_config, save_peers
from pneumo_desktop.core.dicom_node.convert import dx_from_grey, new_identity
from pneumo_desktop.core.dicom_node.results_csv import NODE_CSV_COLUMNS, NodeResultsCsv
from pneumo_desktop.core.dicom_node.results_dicom import PNEUMONIA, build_results, encode
from pneumo_desktop.core.dicom_node.spool import MB, Spool, SpoolFullError, SpoolLockedError
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.runtime import Explanation, PneumoniaModel
from tests.dicom_node_support import require_tool

# ----------------------------------------------------------------------------- settings


def test_peer_parsing_and_bad_values():
    assert Peer.parse("ORTHANC@pacs.local:4242") == Peer("ORTHANC", "pacs.local", 4242)
    assert Peer.parse("PACS@[::1]:104").host == "::1"
    for bad in ("ORTHANC@host", "@host:1", "WAY_TOO_LONG_AE_TITLE@h:1", "A@h:70000", "A\\B@h:1"):
        with pytest.raises(NodeConfigError):
            Peer.parse(bad)


def test_config_file_then_command_line(tmp_path):
    path = tmp_path / "dicom_node.toml"
    path.write_text('port = 4000\nae_title = "SITE"\nallow = ["CR1", "DX2"]\nsend_to = ["main"]\n'
                    'spool_max_mb = 5.5\n\n[[peers]]\nname = "main"\nae_title = "PACS"\nhost = "10.1.2.3"\n'
                    'port = 104\n')
    config = load_config(path)
    assert (config.port, config.ae_title, config.allow, config.spool_max_mb) == (4000, "SITE", ("CR1", "DX2"), 5.5)
    assert config.destinations() == [Peer("PACS", "10.1.2.3", 104, name="main")]
    over = apply(config, {"port": 5000, "ae_title": None, "send_to": ["X@h:9"]})
    assert (over.port, over.ae_title, over.destinations()) == (5000, "SITE", [Peer("X", "h", 9)])
    with pytest.raises(NodeConfigError, match="unknown setting"):
        apply(NodeConfig(), {"colour": "red"}, source="f.toml")
    with pytest.raises(NodeConfigError, match="go together"):
        apply(NodeConfig(), {"tls_cert": "a.pem"})
    # the window's peers are saved without losing the file's other settings
    peers = [config.peers[0], Peer("NEW", "h2", 11, name="n", tls_ca=tmp_path / "ca.pem")]
    save_peers(peers, path)
    again = load_config(path)
    assert again.port == 4000 and again.send_to == ("main",) and list(again.peers) == peers
    save_peers(peers[1:], path)  # the peer `send_to` names is gone: the file is refused, with the reason
    with pytest.raises(NodeConfigError, match="'main' is not a peer"):
        load_config(path)


def test_send_associations_setting(tmp_path):
    assert NodeConfig().send_associations == 4
    assert apply(NodeConfig(), {"send-associations": 2}).send_associations == 2
    for bad in (0, 17):
        with pytest.raises(NodeConfigError, match="send_associations"):
            apply(NodeConfig(), {"send_associations": bad})


def test_missing_config_file_gives_defaults(tmp_path):
    assert load_config(tmp_path / "none.toml") == NodeConfig()


# ----------------------------------------------------------------------------- spool


def test_spool_stores_durably_once_and_survives_a_restart(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10 * MB, min_free_bytes=0)
    assert spool.receive("1.2.3", b"first", "CR1") is True
    assert spool.receive("1.2.3", b"again", "CR1") is False  # a second copy: not queued twice
    with pytest.raises(SpoolLockedError):
        Spool(tmp_path / "spool", max_bytes=10 * MB, min_free_bytes=0)  # one listener per spool
    spool.close()
    reopened = Spool(tmp_path / "spool", max_bytes=10 * MB, min_free_bytes=0)  # after a restart
    [item] = reopened.pending()
    assert (item.sop_instance_uid, item.sender_ae, item.path.read_bytes()) == ("1.2.3", "CR1", b"first")
    reopened.finish(item, {"dest": [("9.9", b"result")]})
    assert reopened.pending() == [] and reopened.receive("1.2.3", b"late copy", "CR1") is False
    [queued] = reopened.queued("dest")
    assert queued.read_bytes() == b"result" and reopened.used_bytes == len(b"result")
    reopened.sent(queued)
    assert reopened.queued("dest") == [] and reopened.used_bytes == 0
    with pytest.raises(ValueError):
        reopened.receive("../../etc", b"x", "CR1")  # a UID names a file: only digits and dots


def test_spool_receivers_write_at_once_and_a_copy_arriving_meanwhile_waits_for_the_first(tmp_path):
    """Receivers write and fsync outside the spool's lock (one slow disk write does not hold up the others);
    a second copy of an instance that is being written waits for the first one's outcome: not stored twice
    when the first is stored, stored when the first failed (nothing lost)."""
    import threading

    spool = Spool(tmp_path / "spool", max_bytes=10 * MB, min_free_bytes=0)
    write = spool._write_durably
    gate, writing = threading.Event(), threading.Event()
    failures = {"1.5"}  # the first write of this one fails

    def slow_write(target, data, sync_folder=True):
        if target.name.startswith(("1.1__", "1.5__")) and data.startswith(b"first"):
            writing.set()
            assert gate.wait(10)
            if target.name.startswith("1.5__") and failures:
                failures.clear()
                raise OSError("disk error")
        write(target, data, sync_folder)

    spool._write_durably = slow_write
    outcomes: dict[str, object] = {}

    def receive(name, uid, data, ae):
        try:
            outcomes[name] = spool.receive(uid, data, ae)
        except OSError as exc:
            outcomes[name] = exc

    for uid in ("1.1", "1.5"):
        gate.clear()
        writing.clear()
        first = threading.Thread(target=receive, args=(f"{uid} first", uid, b"first copy", "A"))
        first.start()
        assert writing.wait(10)
        assert spool.receive(f"{uid}.9", b"other", "B") is True  # not held up by the write in progress
        copy = threading.Thread(target=receive, args=(f"{uid} copy", uid, b"second copy", "C"))
        copy.start()
        copy.join(0.3)
        assert copy.is_alive()  # waits for the first copy's outcome
        gate.set()
        first.join(10)
        copy.join(10)
    assert outcomes["1.1 first"] is True and outcomes["1.1 copy"] is False
    assert isinstance(outcomes["1.5 first"], OSError) and outcomes["1.5 copy"] is True
    waiting = [(p.sop_instance_uid, p.sender_ae, p.path.read_bytes()) for p in spool.pending()]
    assert waiting == [("1.1.9", "B", b"other"), ("1.1", "A", b"first copy"), ("1.5.9", "B", b"other"),
                       ("1.5", "C", b"second copy")]  # in the order they were stored
    assert spool.used_bytes == sum(len(data) for *_, data in waiting) and not any(spool.tmp.iterdir())
    spool.close()
    reopened = Spool(tmp_path / "spool", max_bytes=10 * MB, min_free_bytes=0)  # the index is read back
    assert {(p.sop_instance_uid, p.sender_ae) for p in reopened.pending()} == {(u, a) for u, a, _ in waiting}
    assert reopened.receive("1.5", b"late copy", "D") is False


def test_spool_write_that_fails_after_its_rename_leaves_nothing(tmp_path):
    """A disk error after the file was renamed into incoming/ (the folder's fsync): the sender is told it
    failed, so nothing of it may stay (neither the file nor its bytes); a resend is stored."""
    spool = Spool(tmp_path / "spool", max_bytes=10 * MB, min_free_bytes=0)
    write = spool._write_durably

    def write_then_fail(target, data, sync_folder=True):
        write(target, data, sync_folder)
        raise OSError("fsync failed")

    spool._write_durably = write_then_fail
    with pytest.raises(OSError, match="fsync"):
        spool.receive("1.7", b"first", "A")
    assert not any(spool.incoming.iterdir()) and spool.used_bytes == 0 and spool.pending() == []
    spool._write_durably = write
    assert spool.receive("1.7", b"again", "A") is True and spool.pending()[0].path.read_bytes() == b"again"


def test_spool_limit_refuses_without_storing(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=100, min_free_bytes=0)
    assert spool.receive("1.1", b"x" * 60, "A")
    with pytest.raises(SpoolFullError, match="spool is full"):
        spool.receive("1.2", b"x" * 60, "A")
    assert [p.sop_instance_uid for p in spool.pending()] == ["1.1"] and not any(spool.tmp.iterdir())
    huge = Spool(tmp_path / "other", max_bytes=10**15, min_free_bytes=10**15)  # more free space than any disk
    with pytest.raises(SpoolFullError, match="free"):
        huge.receive("1.3", b"x", "A")


# ----------------------------------------------------------------------------- results


@pytest.fixture(scope="module")
def model(bundled_model_dir) -> PneumoniaModel:
    return PneumoniaModel.load(bundled_model_dir)


@pytest.fixture(scope="module")
def dx_file(tmp_path_factory, sample_paths) -> Path:
    path = tmp_path_factory.mktemp("dx") / "dx.dcm"
    pneumonia = next(p for p in sample_paths if p.name.startswith("person"))
    dx_from_grey(load_image(pneumonia).grey, new_identity("P-1", "DOE^JANE")).save_as(path, enforce_file_format=True)
    return path


def _items(ds) -> list:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += _items(item)
    return out


def _named(items: list, meaning: str) -> list:
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_sr_and_sc_hold_the_result_and_validate(model, dx_file, tmp_path):
    image = load_image(dx_file)
    source = pydicom.dcmread(dx_file, stop_before_pixels=True)
    explanation = model.explain(image)
    prediction = explanation.prediction
    assert not prediction.refused
    objects = build_results(source, image.grey, explanation)
    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    sr_path.write_bytes(encode(objects.sr))
    sc_path.write_bytes(encode(objects.sc))
    assert _dciodvfy_errors(sr_path) == [] and _dciodvfy_errors(sc_path) == []

    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.PatientID == "P-1" and sr.Modality == "SR"
    items = _items(sr)
    [finding] = _named(items, "Finding")
    assert finding.ConceptCodeSequence[0].CodeValue == PNEUMONIA.value == "233604007"
    [probability] = _named(items, "Probability of pneumonia")
    assert probability.ValueType == "NUM"
    assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(prediction.probability, abs=1e-6)
    [threshold] = _named(items, "Decision threshold")
    assert float(threshold.MeasuredValueSequence[0].NumericValue) == pytest.approx(prediction.threshold, abs=1e-6)
    assert _named(items, "Decision threshold source")[0].TextValue == "card"
    assert _named(items, "Algorithm Name")[0].TextValue == prediction.model_name
    assert _named(items, "Algorithm Version")[0].TextValue == prediction.model_version
    assert any(prediction.model_sha256 in i.TextValue for i in _named(items, "Algorithm Parameters"))
    [source_ref] = _named(items, "Source of Measurement")
    assert source_ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "Research use only" in _named(items, "Comment")[0].TextValue
    assert prediction.level is not None  # the bundled model has levels: the SR carries the level and its figures
    [level] = _named(items, "Result level")
    assert level.ConceptCodeSequence[0].CodeMeaning.lower().startswith(prediction.level)
    assert prediction.level_band is not None
    assert _named(items, "Result level operating figures")[0].TextValue == prediction.level_band.figures()
    has_viral = bool(_named(items, "Probability of viral pneumonia given pneumonia"))
    assert has_viral == (prediction.p_viral is not None)

    sc = pydicom.dcmread(sc_path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "YBR_FULL_422"
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG Baseline: ~1/16 of the RGB bytes
    assert sc.LossyImageCompression == "01" and "ISO_10918_1" in sc.LossyImageCompressionMethod
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID not in (
        source.SeriesInstanceUID, sr.SeriesInstanceUID)
    assert sc.BurnedInAnnotation == "YES"
    pixels = sc.pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and max(pixels.shape[:2]) <= 1024 + 200
    # the text bands above and below the picture carry the burned-in words (bright pixels on black)
    assert (pixels[:20].max() > 200) and (pixels[-20:].max() > 200)

    again = build_results(source, image.grey, explanation)
    assert again.uids == objects.uids  # scored again after a crash: the same objects for the receiver
    assert encode(again.sr) == sr_path.read_bytes() and encode(again.sc) == sc_path.read_bytes()  # byte for byte
    # the SR carries the documented template's frame: root container, observer context, flags
    assert (sr.ContinuityOfContent, sr.CompletionFlag, sr.VerificationFlag) == ("SEPARATE", "COMPLETE", "UNVERIFIED")
    assert _named(items, "Observer Type")[0].ConceptCodeSequence[0].CodeMeaning == "Device"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_refused_image_gets_a_refusal_report(model, dx_file, tmp_path):
    if model.card.refusal is None:
        pytest.skip("the bundled model has no refusal limit")
    image = load_image(dx_file)
    source = pydicom.dcmread(dx_file, stop_before_pixels=True)
    refused = model.prediction(None, 0.7, ood_score=model.card.refusal.limit * 10)
    assert refused.refused
    objects = build_results(source, image.grey, Explanation(prediction=refused, cam=None))
    sr_path = tmp_path / "refused.dcm"
    sr_path.write_bytes(encode(objects.sr))
    assert _dciodvfy_errors(sr_path) == []
    items = _items(pydicom.dcmread(sr_path))
    assert not _named(items, "Probability of pneumonia")
    assert "out-of-distribution" in _named(items, "Reason for refusal")[0].TextValue
    assert _named(items, "AI result")[0].ConceptCodeSequence[0].CodeValue == "PNEU-REF"
    assert np.asarray(objects.sc.pixel_array).ndim == 3


def test_results_csv_has_one_row_per_instance(tmp_path, model):
    from pneumo_desktop.core.batch import BatchRow

    path = tmp_path / "results.csv"
    row = BatchRow(tmp_path / "a.dcm", 0.25, "NORMAL", 0.5, model.sha256, "ab" * 32, "", threshold_source="card")
    results = NodeResultsCsv(path)
    assert results.append(row, "1.2.3", "CR1") is True
    assert results.append(row, "1.2.3", "CR1") is False
    results.close()
    reopened = NodeResultsCsv(path)  # after a restart
    assert reopened.append(row, "1.2.3", "CR1") is False and reopened.append(row, "1.2.4", "=cmd") is True
    reopened.close()
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(NODE_CSV_COLUMNS) and len(lines) == 3
    assert lines[1].endswith(",1.2.3,CR1") and lines[2].endswith(",1.2.4,'=cmd")  # formulas neutralised


def test_scorer_scores_good_instances_and_keeps_undecodable_ones(tmp_path, model, dx_file):
    from pneumo_desktop.core.dicom_node.send import Destination
    from pneumo_desktop.core.dicom_node.service import NodeService

    spool = Spool(tmp_path / "spool", 100 * MB, 0)
    results = NodeResultsCsv(tmp_path / "results.csv")
    destination = Destination(peer=Peer("PACS", "127.0.0.1", 1))
    service = NodeService(spool, model, results, [destination], "PNEUMO")
    good = dx_file.read_bytes()
    broken_ds = pydicom.dcmread(dx_file)
    broken_ds.SOPInstanceUID = "1.2.3.999"
    broken_ds.PixelData = broken_ds.PixelData[:1000]  # pixel data cut short: the header is fine, decoding fails
    broken_path = tmp_path / "broken.dcm"
    broken_ds.save_as(broken_path, enforce_file_format=True)
    good_uid = pydicom.dcmread(dx_file, stop_before_pixels=True).SOPInstanceUID
    assert spool.receive(good_uid, good, "CR1") and spool.receive("1.2.3.999", broken_path.read_bytes(), "CR1")
    service.score(spool.pending())
    assert spool.pending() == []
    assert (spool.failed / "1.2.3.999.dcm").exists()
    assert len(spool.queued(destination.key)) == 2  # the good one's SR and SC wait for the PACS
    results.close()
    rows = {line.split(",")[-2]: line for line in (tmp_path / "results.csv").read_text().splitlines()[1:]}
    assert ",scored," in rows[good_uid] and ",error," in rows["1.2.3.999"]
    assert str(spool.failed / "1.2.3.999.dcm") in rows["1.2.3.999"]
    assert spool.receive("1.2.3.999", broken_path.read_bytes(), "CR1") is False  # not retried on a resend
    spool.close()


def test_uncompressed_sc_and_a_source_with_its_own_character_set_validate(model, dx_file, tmp_path):
    """A source in Latin-1 (ISO_IR 100) with an accented name; the SC without compression (as a peer that
    takes no JPEG receives it)."""
    image = load_image(dx_file)
    source = pydicom.dcmread(dx_file, stop_before_pixels=True)
    source.SpecificCharacterSet = "ISO_IR 100"
    source.PatientName = "Müller^Jürgen"
    explanation = model.explain(image)
    objects = build_results(source, image.grey, explanation, compress=False)
    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    sr_path.write_bytes(encode(objects.sr))
    sc_path.write_bytes(encode(objects.sc))
    assert _dciodvfy_errors(sr_path) == [] and _dciodvfy_errors(sc_path) == []
    for path in (sr_path, sc_path):
        back = pydicom.dcmread(path)
        assert back.SpecificCharacterSet == "ISO_IR 100" and str(back.PatientName) == "Müller^Jürgen"
    sc = pydicom.dcmread(sc_path)
    assert sc.PhotometricInterpretation == "RGB" and sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    jpeg = pydicom.dcmread(io.BytesIO(encode(build_results(source, image.grey, explanation).sc))).pixel_array
    difference = np.abs(sc.pixel_array.astype(int) - jpeg.astype(int))
    assert difference.mean() < 2.0  # the JPEG SC is the same picture, with JPEG's small errors


def test_a_source_without_a_series_uid_cannot_get_results(model, dx_file):
    from pneumo_desktop.core.dicom_node.results_dicom import ResultBuildError

    image = load_image(dx_file)
    source = pydicom.dcmread(dx_file, stop_before_pixels=True)
    del source.SeriesInstanceUID
    with pytest.raises(ResultBuildError, match="SeriesInstanceUID"):
        build_results(source, image.grey, model.explain(image))


def test_result_picture_blend_is_the_apps_overlay(model, dx_file):
    """The node's table look-up gives render_overlay's pixels exactly, for a real map and for random ones."""
    from pneumo_desktop.core.dicom_node.result_image import blend
    from pneumo_desktop.core.overlay import render_overlay

    image = load_image(dx_file)
    cam = model.explain(image).cam
    assert cam is not None
    rng = np.random.default_rng(7)
    cases = [(image.grey, cam), (rng.integers(0, 256, (90, 70), dtype=np.uint8), rng.random((7, 7)) * 1.2 - 0.1)]
    for grey, values in cases:
        expected = render_overlay(grey, values)
        out = np.empty((*grey.shape, 3), np.uint8)
        blend(grey, values, out)
        assert np.array_equal(out, expected)
        padded = np.full((*grey.shape, 4), 7, np.uint8)  # the node's RGBX canvas: the same RGB, padding 0
        blend(grey, values, padded)
        assert np.array_equal(padded[:, :, :3], expected) and not padded[:, :, 3].any()


def test_sc_from_the_rgbx_picture_is_the_sc_from_the_rgb_one(model, dx_file):
    """The node encodes the RGBX canvas directly: the same SC, byte for byte, as from the RGB picture."""
    from pneumo_desktop.core.dicom_node.result_image import render_result, render_result_rgbx
    from pneumo_desktop.core.dicom_node.results_dicom import build_sc, result_uids

    image = load_image(dx_file)
    source = pydicom.dcmread(dx_file, stop_before_pixels=True)
    explanation = model.explain(image)
    prediction = explanation.prediction
    rgbx = render_result_rgbx(image.grey, explanation.cam, prediction)
    rgb = render_result(image.grey, explanation.cam, prediction)
    assert rgbx.shape[2] == 4 and np.array_equal(rgbx[:, :, :3], rgb)
    uids = result_uids(str(source.StudyInstanceUID), str(source.SOPInstanceUID), prediction.model_sha256)
    for compress in (True, False):
        assert encode(build_sc(source, rgbx, prediction, uids, compress)) == encode(
            build_sc(source, rgb, prediction, uids, compress))


def test_partial_batches_score_like_explain_many(model, sample_paths):
    """The node runs full batches together and the rest one by one, with maps at the picture's size."""
    from pneumo_desktop.core.cam_methods import map_at
    from pneumo_desktop.core.dicom_node.service import score_for_results

    images = [load_image(p) for p in sample_paths[: model.batch_size + 3]]
    ours = score_for_results(model, images)
    reference = model.explain_many(images)
    assert len(ours) == len(images)
    for image, (prediction, parts), theirs in zip(images, ours, reference, strict=True):
        assert prediction.status == theirs.prediction.status
        if theirs.prediction.probability is not None:
            assert prediction.probability == pytest.approx(theirs.prediction.probability, abs=1e-5)
        assert (parts is None) == (theirs.cam is None)
        if parts is not None and theirs.cam is not None:  # the same map, from the parts the node hands over
            cam = map_at(*parts, image.height, image.width, model.card.map_method)
            assert np.abs(cam - theirs.cam).max() < 1e-3


def test_spool_shares_split_the_queue_without_overlap(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10 * MB, min_free_bytes=0)
    spool.queue_results({"dest": [(f"1.2.{i}", b"x") for i in range(40)]})
    shares = [set(spool.queued("dest", share=(i, 3))) for i in range(3)]
    assert set().union(*shares) == set(spool.queued("dest")) and sum(len(s) for s in shares) == 40
    assert all(shares)  # each sender gets some
    spool.close()


def _result_files(model, dx_file: Path, folder: Path):
    """The SR and SC of `dx_file` as the node queues them: (ResultObjects, [sr.dcm, sc.dcm] in `folder`)."""
    image = load_image(dx_file)
    objects = build_results(pydicom.dcmread(dx_file, stop_before_pixels=True), image.grey, model.explain(image))
    files = []
    for name, ds in (("sr", objects.sr), ("sc", objects.sc)):
        files.append(folder / f"{name}.dcm")
        files[-1].write_bytes(encode(ds))
    return objects, files


def test_peer_without_jpeg_gets_the_sc_uncompressed_over_one_kept_association(model, dx_file, tmp_path):
    """A real pynetdicom Storage SCP that takes the SC uncompressed only; two sends, one association."""
    from pynetdicom import AE, evt

    from pneumo_desktop.core.dicom_node.send import Outcome, PeerConnection
    from tests.dicom_node_support import free_port

    received: list[pydicom.Dataset] = []
    opened: list[int] = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    scp = AE(ae_title="NOJPEG")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.88.33", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2"])  # Implicit VR only
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, lambda event: opened.append(1))])
    try:
        objects, files = _result_files(model, dx_file, tmp_path)
        connection = PeerConnection(Peer("NOJPEG", "127.0.0.1", port), "PNEUMO")
        first = connection.send(files[:1])
        second = connection.send(files[1:])
        connection.close()
    finally:
        server.shutdown()
    assert [r.outcome for r in first + second] == [Outcome.SENT, Outcome.SENT]
    assert len(opened) == 1  # the second send went over the association the first opened
    sc = next(ds for ds in received if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7")
    assert sc.PhotometricInterpretation == "RGB" and sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert sc.pixel_array.shape[2] == 3 and sc.SOPInstanceUID == objects.uids.sc_instance


def test_quieter_polling_hooks_real_associations_and_dimse_still_flows(tmp_path):
    """The node's associations (listener and sender sides) get the waiting reactor: pynetdicom's internals are
    as polling.py expects (a pynetdicom that changed them would silently fall back to busy polling), and
    C-ECHO and release still go through on both sides."""
    from pynetdicom import AE, evt

    from pneumo_desktop.core.dicom_node.polling import ReactorWake, quieter_polling
    from pneumo_desktop.core.dicom_node.send import _associate, echo

    hooked: list[object] = []
    server_ae = AE("PNEUMO")
    server_ae.add_supported_context("1.2.840.10008.1.1")
    server = server_ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_ACCEPTED, lambda event: hooked.append(quieter_polling(event.assoc)))])
    try:
        peer = Peer("PNEUMO", "127.0.0.1", int(server.server_address[1]))
        for _ in range(3):  # echo() pauses the reactor around its own calls
            assert "answered" in echo(peer, "MODALITY")
        assoc, wake = _associate(peer, "MODALITY", (("1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),))
        assert isinstance(wake, ReactorWake) and assoc.is_established
        assoc.send_c_echo()  # without paused(): slower to start, still correct
        with wake.paused():
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        assert assoc.is_released
        assert len(hooked) == 4 and all(isinstance(h, ReactorWake) for h in hooked)
    finally:
        server.shutdown()


def test_read_exactly_reads_what_pynetdicom_asks_for_and_stops_at_a_closed_connection():
    """tcp.read_exactly replaces pynetdicom's 4 KB-at-a-time recv: exactly n bytes across however many
    pieces they arrive in; fewer when the peer closes first (as pynetdicom's); nothing left over."""
    import socket
    import threading

    from pneumo_desktop.core.dicom_node.tcp import read_exactly

    payload = bytes(range(256)) * 4000  # ~1 MB, sent in uneven pieces
    ours, theirs = socket.socketpair()
    try:
        def send() -> None:
            for start in range(0, len(payload), 70_001):
                theirs.sendall(payload[start : start + 70_001])
            theirs.sendall(b"tail")
            theirs.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        assert read_exactly(ours, 6) == payload[:6]
        assert read_exactly(ours, len(payload) - 6) == payload[6:]
        assert read_exactly(ours, 100) == b"tail"  # the connection closed after 4 of the 100 bytes
        assert read_exactly(ours, 10) == b""
        sender.join(10)
    finally:
        ours.close()
        theirs.close()


def test_an_idle_dul_wakes_for_a_queued_pdu_and_for_data_on_its_socket():
    """polling._wake_on_events: the DUL's idle wait (what its sleep runs) ends when a PDU is queued for it
    (send_pdu) or its socket has data, not after its full delay; pynetdicom's own send_pdu still runs."""
    import socket
    import threading
    import types

    from pneumo_desktop.core.dicom_node.polling import _wake_on_events

    ours, peer = socket.socketpair()
    queued: list[str] = []
    dul = types.SimpleNamespace(socket=types.SimpleNamespace(socket=ours), send_pdu=queued.append,
                                stop_dul=lambda: True)
    closers: list = []
    assoc = types.SimpleNamespace(bind=lambda event, handler: closers.append(handler))
    try:
        assert _wake_on_events(assoc, dul)
        for trigger in (lambda: dul.send_pdu("P-DATA"), lambda: peer.sendall(b"\x04")):
            idle = threading.Thread(target=dul._pneumo_wait, args=(120.0,))
            idle.start()
            trigger()
            idle.join(60)
            assert not idle.is_alive()  # woken, long before its 120 s
        assert queued == ["P-DATA"]
    finally:
        for close in closers:
            close(None)
        ours.close()
        peer.close()


def test_the_reactor_leaves_a_response_to_the_call_that_paused_it():
    """pynetdicom pauses an association's reactor around its own DIMSE calls, with a window in which the
    reactor can still take a message off the queue; the quieter reactor's wait widened that window to 20 ms,
    and a C-STORE response taken there left send_c_store waiting 30 s (a stalled share in bench_node.py).
    While a call is under way (paused()), the reactor's look takes nothing; otherwise it takes what is there."""
    import queue
    import types

    from pneumo_desktop.core.dicom_node.polling import quieter_polling

    msg_queue: queue.Queue = queue.Queue()
    dimse = types.SimpleNamespace(msg_queue=msg_queue)
    dimse.get_msg = lambda block=False: msg_queue.get(block=block) if block or not msg_queue.empty() else (None, None)
    assoc = types.SimpleNamespace(dul=types.SimpleNamespace(_run_loop_delay=0.001), dimse=dimse)
    wake = quieter_polling(assoc)
    assert wake is not None
    with wake.paused():
        msg_queue.put((1, "C-STORE-RSP"))
        assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's look: left for the call
        assert assoc.dimse.get_msg(block=True) == (1, "C-STORE-RSP")  # the call's own wait gets it
    msg_queue.put((1, "C-ECHO-RQ"))
    assert assoc.dimse.get_msg(block=False) == (1, "C-ECHO-RQ")  # no call under way: the reactor serves it


def test_node_associations_send_without_delay_and_their_duls_wake_on_events(model, dx_file, tmp_path):
    """Both ends of the node's associations (its listener's, and its own to a peer) have TCP_NODELAY and
    acknowledge what they read at once (tcp.py: ~45 ms less per C-STORE against Orthanc); their DUL threads
    wait for their socket or a queued PDU instead of sleeping (polling.py): a wake ends an idle wait."""
    import socket

    from pynetdicom import AE, evt

    from pneumo_desktop.core.dicom_node.scp import StorageListener
    from pneumo_desktop.core.dicom_node.send import Outcome, PeerConnection
    from pneumo_desktop.core.dicom_node.tcp import prompt_acks
    from tests.dicom_node_support import free_port, storescu

    def nodelay(assoc) -> int:
        return assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    # the listener's side, with DCMTK's storescu as the modality
    port = free_port()
    listener_side: list[int] = []
    spool = Spool(tmp_path / "spool", max_bytes=100 * MB, min_free_bytes=0)
    listener = StorageListener(NodeConfig(port=port, bind="127.0.0.1"), spool)
    listener.start()
    listener._server.bind(evt.EVT_DIMSE_RECV, lambda event: listener_side.append(nodelay(event.assoc)))
    try:
        require_tool("storescu")
        assert storescu(port, [dx_file]).returncode == 0
    finally:
        listener.shutdown()
        spool.close()
    assert listener_side == [1] and listener.received == 1

    # the sender's side, against a pynetdicom Storage SCP
    _objects, files = _result_files(model, dx_file, tmp_path)
    connection = PeerConnection(Peer("PACS", "127.0.0.1", free_port()), "PNEUMO")
    scp = AE(ae_title="PACS")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.88.33", ["1.2.840.10008.1.2.1"])
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2.4.50"])
    server = scp.start_server(("127.0.0.1", connection.peer.port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        results = connection.send(files)
        assert nodelay(connection._assoc) == 1 and callable(getattr(connection._assoc.dul, "_pneumo_wait", None))
        connection.close()
    finally:
        server.shutdown()
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert prompt_acks(object()) is False  # not an association: left alone


def test_scorer_gathers_a_full_batch_while_instances_arrive(tmp_path, model):
    """A partial batch waits for instances that keep arriving (fewer, fuller model runs); when none come it is
    scored as it is. The same instances either way, oldest first."""
    from pneumo_desktop.core.dicom_node.service import NodeService

    spool = Spool(tmp_path / "spool", 100 * MB, 0)
    csv = NodeResultsCsv(tmp_path / "results.csv")
    service = NodeService(spool, model, csv, [], "PNEUMO")
    size = model.batch_size
    for i in range(2):
        spool.receive(f"1.2.{i}", b"x", "CR1")
    first = spool.pending(limit=size)
    assert service._gather(first) == first  # nothing else arrives: no more waiting than GATHER_QUIET_S

    stale = spool.pending(limit=size)
    for i in range(2, size + 3):  # more arrive while the scorer holds its partial batch
        spool.receive(f"1.2.{i}", b"x", "CR1")
        service.notify()  # what the listener does for each stored instance
    gathered = service._gather(stale)
    assert len(stale) == 2 and gathered == spool.pending(limit=size) and len(gathered) == size  # oldest first
    csv.close()
    spool.close()


def test_scorer_does_not_take_instances_whose_results_are_being_built(tmp_path, model):
    """The scorer hands a scored batch to the results thread; until they are marked done, those instances
    are still in incoming/ (a kill then re-scores them) but the scorer must not take them a second time."""
    from pneumo_desktop.core.dicom_node.service import NodeService

    spool = Spool(tmp_path / "spool", 100 * MB, 0)
    csv = NodeResultsCsv(tmp_path / "results.csv")
    service = NodeService(spool, model, csv, [], "PNEUMO")
    for i in range(model.batch_size + 2):
        spool.receive(f"1.2.{i}", b"x", "CR1")
    first = service._waiting()
    assert first == spool.pending(limit=model.batch_size)
    service._in_flight.update(item.sop_instance_uid for item in first)
    rest = service._waiting()
    assert [item.sop_instance_uid for item in rest] == [item.sop_instance_uid for item in spool.pending()[len(first):]]
    assert not service.idle()  # in flight counts as work
    csv.close()
    spool.close()


def test_results_built_in_the_child_process_are_the_results_built_here(model, dx_file, tmp_path):
    """The node builds SRs and SCs in a child process (results_process.py): byte for byte the files built in
    this process; a source the builders cannot use fails alone, with its reason; the child ignores SIGINT
    (Ctrl+C reaches the whole process group); when it dies, that batch is built here and a new child takes the
    next; close() ends the child."""
    import os
    import signal

    from pneumo_desktop.core.dicom_node.results_process import ResultJob, ResultsProcess, build_encoded
    from pneumo_desktop.core.dicom_node.service import _elements_only, score_for_results
    from tests.dicom_node_support import wait_until

    image = load_image(dx_file)
    header = _elements_only(pydicom.dcmread(dx_file, stop_before_pixels=True))
    [(prediction, parts)] = score_for_results(model, [image])
    assert parts is not None
    good = ResultJob(header, image.grey, prediction, parts, model.card.map_method)
    broken_header = _elements_only(pydicom.dcmread(dx_file, stop_before_pixels=True))
    del broken_header.SeriesInstanceUID
    broken = ResultJob(broken_header, image.grey, prediction, parts, model.card.map_method)
    process = ResultsProcess()
    try:
        built = process.build_many([good, broken])
        [first_child] = list(process._pool._processes)
        os.kill(first_child, signal.SIGINT)  # Ctrl+C reaches the whole group: the child ignores it
        assert process.build_many([good]) == [build_encoded(good)]
        assert list(process._pool._processes) == [first_child]
        os.kill(first_child, signal.SIGKILL)  # the child dies: that batch is built here, the next by a new child
        assert wait_until(lambda: _zombie(first_child), timeout=10)
        after_death = process.build_many([good])
        again = process.build_many([good])
        [second_child] = list(process._pool._processes)
        assert process.in_child and second_child != first_child
    finally:
        process.close()
    here = build_encoded(good)
    assert built[0] == here and [len(files) for files in (built[0].files, built[1].files)] == [2, 0]
    assert after_death == again == [here]
    sr = pydicom.dcmread(io.BytesIO(here.files[0][1]))
    assert sr.SOPInstanceUID == here.files[0][0] and sr.StudyInstanceUID == header.StudyInstanceUID
    assert "SeriesInstanceUID" in built[1].error
    assert not Path(f"/proc/{second_child}").exists()  # closed: the child is gone


def test_the_results_process_ends_with_a_listener_killed_by_sigkill(tmp_path):
    """A SIGKILL runs no clean-up: the child must notice its parent's end by itself (no orphans left by the
    node's kill -9 recovery, tests/test_dicom_node_e2e.py and bench_node.py)."""
    import os
    import signal
    import sys

    from tests.dicom_node_support import wait_until

    script = ("from pneumo_desktop.core.dicom_node.results_process import ResultsProcess\n"
              "import sys, time\n"
              "process = ResultsProcess()\nprocess.start()\n"
              "print(*process._pool._processes, flush=True)\n"
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    assert wait_until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), timeout=10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_header_on_its_way_to_the_results_process_keeps_its_encoding_and_character_set(model, dx_file, tmp_path):
    """The scorer sends the child the header's elements only (service._elements_only, pickled): read from an
    Implicit VR file in Latin-1, its results are byte for byte those of the header as read."""
    import pickle

    from pneumo_desktop.core.dicom_node.service import _elements_only

    source = pydicom.dcmread(dx_file)
    source.SpecificCharacterSet = "ISO_IR 100"
    source.PatientName = "Müller^Jürgen"
    implicit = tmp_path / "implicit.dcm"
    source.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    source.save_as(implicit, enforce_file_format=True)
    data = implicit.read_bytes()
    as_read = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    travelled = pickle.loads(pickle.dumps(_elements_only(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))))
    assert len(pickle.dumps(_elements_only(as_read))) < len(data) // 20  # not the whole file
    image = load_image(implicit)
    explanation = model.explain(image)
    ours, reference = build_results(travelled, image.grey, explanation), build_results(as_read, image.grey, explanation)
    assert encode(ours.sr) == encode(reference.sr) and encode(ours.sc) == encode(reference.sc)
    assert str(pydicom.dcmread(io.BytesIO(encode(ours.sr))).PatientName) == "Müller^Jürgen"
