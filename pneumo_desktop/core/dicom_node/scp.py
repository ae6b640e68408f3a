"""The Storage SCP (C-STORE, C-ECHO) that a modality or a PACS sends X-rays to.

Accepted: Digital X-Ray (for presentation, for processing), Computed Radiography and Secondary Capture, in
the transfer syntaxes this installation can decode (accepted_transfer_syntaxes). Other SOP classes get no
presentation context (the sender is told at association time); a dataset that cannot be parsed, or lacks
what scoring needs, gets a failure status and a log line; the listener keeps serving.

A C-STORE success is answered only once the instance is fsynced in the spool (Spool.receive).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from pneumo_desktop.core.dicom_node.config import NodeConfig
from pneumo_desktop.core.dicom_node.polling import quieter_polling
from pneumo_desktop.core.dicom_node.spool import MB, Spool, SpoolFullError, valid_uid
from pneumo_desktop.core.dicom_node.tcp import prompt_acks

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
ACCEPTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
_CANDIDATE_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
# Status codes (PS3.4 Annex B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122


def accepted_transfer_syntaxes() -> list[str]:
    """The candidates this installation decodes (pydicom with its plugins, GDCM); the uncompressed ones always."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    out = []
    for uid in _CANDIDATE_SYNTAXES:
        syntax = UID(uid)
        if not syntax.is_compressed:
            out.append(uid)
            continue
        try:
            if get_decoder(syntax).is_available:
                out.append(uid)
        except NotImplementedError:
            continue
    return out


def server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    if config.tls_ca is not None:  # callers must present a certificate signed by this CA
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(config.tls_ca))
    return context


def check_dataset(ds: Any, affected_uid: str) -> tuple[int, str]:
    """What the scorer needs, checked before anything is stored: (status, reason); SUCCESS when usable."""
    for _element in ds:  # decodes every element: a garbled one raises here, not in the scorer
        pass
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    if sop_uid != affected_uid:
        return DATASET_DOES_NOT_MATCH, f"SOP Instance UID {sop_uid!r} differs from the request's {affected_uid!r}"
    if not valid_uid(sop_uid):
        return CANNOT_UNDERSTAND, f"invalid SOP Instance UID {sop_uid!r}"
    if str(ds.get("SOPClassUID", "")) not in ACCEPTED_SOP_CLASSES:
        return SOP_CLASS_NOT_SUPPORTED, f"SOP class {ds.get('SOPClassUID')} is not an X-ray class this node scores"
    if not valid_uid(str(ds.get("StudyInstanceUID", ""))):
        return DATASET_DOES_NOT_MATCH, "no valid Study Instance UID (results could not join the study)"
    if "PixelData" not in ds or not int(ds.get("Rows", 0) or 0) or not int(ds.get("Columns", 0) or 0):
        return DATASET_DOES_NOT_MATCH, "no pixel data, rows or columns"
    return SUCCESS, ""


def _tune_association(event: Any) -> None:
    prompt_acks(event.assoc)
    quieter_polling(event.assoc)


class StorageListener:
    def __init__(self, config: NodeConfig, spool: Spool, on_stored: Callable[[], None] = lambda: None) -> None:
        self.config, self.spool, self.on_stored = config, spool, on_stored
        self.max_instance_bytes = int(config.max_instance_mb * MB)
        self._server: Any = None
        self.received = 0
        self.duplicates = 0
        self.refused = 0

    def start(self) -> None:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = 0  # no limit on what we receive: fewer, larger PDUs
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
        if self.config.allow:
            ae.require_calling_aet = list(self.config.allow)
        syntaxes = accepted_transfer_syntaxes()
        ae.add_supported_context(VERIFICATION)
        for uid in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                               (evt.EVT_REJECTED, self._on_rejected),
                               (evt.EVT_ACCEPTED, _tune_association)]
        self._server = ae.start_server((self.config.bind, self.config.port), block=False, evt_handlers=handlers,
                                       ssl_context=server_ssl_context(self.config))
        log.info("listening as %s on %s:%d (%s)", self.config.ae_title, self.config.bind, self.config.port,
                 "TLS" if self.config.tls_cert else "no TLS")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def _on_rejected(self, event: Any) -> None:
        log.warning("association from %s (%s) rejected: calling AE title not allowed, or too many associations",
                    event.assoc.requestor.ae_title, event.assoc.requestor.address)

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        affected = str(event.request.AffectedSOPInstanceUID)
        try:
            size = len(event.request.DataSet.getvalue())
            if size > self.max_instance_bytes:
                self.refused += 1
                log.warning("refused %s from %s: %.1f MB is over the instance limit (%.1f MB)", affected, calling,
                            size / MB, self.max_instance_bytes / MB)
                return OUT_OF_RESOURCES
            if valid_uid(affected) and self.spool.is_known(affected):  # a copy sent again (after a restart, say):
                self.duplicates += 1  # success without parsing it; Spool.receive below checks again anyway
                log.info("%s from %s was received before: not scored again", affected, calling)
                return SUCCESS
            try:
                status, reason = check_dataset(event.dataset, affected)
            except Exception as exc:  # a malformed dataset: pydicom raises many types
                status, reason = CANNOT_UNDERSTAND, f"the dataset cannot be parsed: {type(exc).__name__}: {exc}"
            if status != SUCCESS:
                self.refused += 1
                log.warning("refused %s from %s: %s (status 0x%04X)", affected, calling, reason, status)
                return status
            data = event.encoded_dataset()  # preamble, file meta and the dataset as it was sent
            try:
                stored = self.spool.receive(affected, data, calling)
            except SpoolFullError as exc:
                self.refused += 1
                log.warning("refused %s from %s: %s", affected, calling, exc)
                return OUT_OF_RESOURCES
            except OSError as exc:  # disk full or failing: nothing half-stored, the sender may retry
                self.refused += 1
                log.error("cannot store %s from %s in the spool: %s", affected, calling, exc)
                return OUT_OF_RESOURCES
        except Exception:  # a bug: log it, tell the sender, keep serving
            log.exception("unexpected error while receiving %s from %s", affected, calling)
            return CANNOT_UNDERSTAND
        if stored:
            self.received += 1
            self.on_stored()
        else:
            self.duplicates += 1
            log.info("%s from %s was received before: not scored again", affected, calling)
        return SUCCESS
