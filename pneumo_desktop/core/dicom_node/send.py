"""Sending result files to a destination: a DICOM peer (C-STORE, optionally over TLS) or a STOW-RS URL.

`send_files` returns one outcome per file: sent, retry (the peer is down, busy or out of resources: try
again later) or rejected (the peer refused this object for good). Also the C-ECHO the window's Echo button
runs. No retry loop here: the sender thread (service.py) owns the back-off.
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError

from pneumo_desktop.core.dicom_node.config import Peer
from pneumo_desktop.core.dicom_node.polling import ReactorWake, quieter_polling
from pneumo_desktop.core.dicom_node.tcp import prompt_acks

log = logging.getLogger(__name__)

SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_LE, IMPLICIT_VR_LE, JPEG_BASELINE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"
UNCOMPRESSED = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)  # the SR's own encoding first; Implicit VR for peers that
# take only that. The results' presentation contexts: the SC in its own JPEG Baseline and, in a second
# context, uncompressed for a peer that does not take JPEG (PeerConnection decompresses it for that peer).
RESULT_CONTEXTS = ((SR_CLASS, UNCOMPRESSED), (SC_CLASS, (JPEG_BASELINE,)), (SC_CLASS, UNCOMPRESSED))
TIMEOUT_S = 30.0


class Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True)
class SendResult:
    path: Path
    outcome: Outcome
    detail: str = ""


def client_ssl_context(peer: Peer) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(peer.tls_ca) if peer.tls_ca else None)
    context.check_hostname = False  # DICOM peers are named by AE title and address; the CA pins who they are
    if peer.tls_cert is not None and peer.tls_key is not None:
        context.load_cert_chain(str(peer.tls_cert), str(peer.tls_key))
    return context


def _associate(peer: Peer, calling_ae: str, contexts: tuple[tuple[str, tuple[str, ...]], ...]):
    # -> pynetdicom Association
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for uid, syntaxes in contexts:
        ae.add_requested_context(uid, list(syntaxes))
    tls = (client_ssl_context(peer), peer.host) if peer.uses_tls else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls)
    prompt_acks(assoc)
    return assoc, quieter_polling(assoc)


@contextmanager
def _reactor_paused(wake: ReactorWake | None) -> Iterator[None]:
    """Around a requestor's own DIMSE call: its reactor pauses at once instead of after its idle wait."""
    if wake is None:
        yield
        return
    with wake.paused():
        yield


def echo(peer: Peer, calling_ae: str = "PNEUMO") -> str:
    """C-ECHO the peer; returns a sentence for a person ('... answered') or raises ConnectionError."""
    try:
        assoc, wake = _associate(peer, calling_ae, (("1.2.840.10008.1.1", UNCOMPRESSED),))
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionError(f"{peer.label}: {exc}") from None
    if not assoc.is_established:
        raise ConnectionError(f"{peer.label}: {_why_not(assoc)}")
    try:
        with _reactor_paused(wake):
            status = assoc.send_c_echo()
    finally:
        with _reactor_paused(wake):
            assoc.release()
    if not status or status.get("Status") != 0:
        raise ConnectionError(f"{peer.label} answered the echo with status {_status_text(status)}")
    return f"{peer.label} answered the echo (C-ECHO success)"


def _why_not(assoc) -> str:
    if assoc.is_rejected:
        return "the peer rejected the association (check the AE titles and that it knows this node)"
    if assoc.is_aborted:
        return "the association was aborted (wrong port, TLS mismatch, or the peer refused the connection)"
    return "no association: the peer cannot be reached (check host, port and that it is running)"


def _status_text(status) -> str:
    return "none (no answer)" if not status else f"0x{int(status.get('Status', 0xFFFF)):04X}"


def _is_transient(code: int) -> bool:
    """Out of resources (0xA7xx), and the codes a busy or restarting peer answers: try again later."""
    return (code & 0xFF00) == 0xA700 or code in (0x0210, 0x0211, 0x0212, 0xA702)


def _enable_chunked_send() -> None:
    """pynetdicom sends a file given by path straight from disk, in PDU-sized chunks, without decoding and
    re-encoding it (its documented STORE_SEND_CHUNKED_DATASET setting); used only when the peer accepted the
    file's own transfer syntax (see PeerConnection._store)."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True


class PeerConnection:
    """C-STORE to one peer over an association that is kept between calls of send() (reopened when lost).

    One thread uses it (the destination's sender, or the window's one-shot send); close() releases it."""

    def __init__(self, peer: Peer, calling_ae: str) -> None:
        self.peer, self.calling_ae = peer, calling_ae
        self._assoc: Any = None  # pynetdicom Association (untyped)
        self._wake: ReactorWake | None = None
        self._accepted: set[tuple[str, str]] = set()  # (SOP class, transfer syntax) the peer accepted
        _enable_chunked_send()

    @property
    def is_open(self) -> bool:
        return self._assoc is not None and self._assoc.is_established

    def _open(self) -> str:
        """'' once an association is established, else why not."""
        if self.is_open:
            return ""
        self._assoc = None
        try:
            assoc, wake = _associate(self.peer, self.calling_ae, RESULT_CONTEXTS)
        except (OSError, ssl.SSLError) as exc:
            return str(exc)
        if not assoc.is_established:
            return _why_not(assoc)
        self._assoc, self._wake = assoc, wake
        self._accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
        return ""

    def close(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            with _reactor_paused(self._wake):
                assoc.release()

    def send(self, files: list[Path]) -> list[SendResult]:
        why = self._open()
        if why:
            return [SendResult(p, Outcome.RETRY, why) for p in files]
        results = []
        for index, path in enumerate(files):
            if not self.is_open:  # dropped mid-way: the rest waits for the next try (on a new association)
                results += [SendResult(p, Outcome.RETRY, "association lost") for p in files[index:]]
                break
            try:
                status = self._store(path)
            except (OSError, ValueError, RuntimeError, AttributeError, InvalidDicomError) as exc:
                # an unreadable queued file, or no presentation context for it: this object, not the peer
                results.append(SendResult(path, Outcome.REJECTED, f"{type(exc).__name__}: {exc}"))
                continue
            code = int(status.get("Status", 0xFFFF)) if status else None
            if code is None:
                results.append(SendResult(path, Outcome.RETRY, "no answer to C-STORE"))
            elif code == 0 or (code & 0xF000) == 0xB000:  # success, or warning (stored with coercion)
                results.append(SendResult(path, Outcome.SENT, f"0x{code:04X}"))
            elif _is_transient(code):
                results.append(SendResult(path, Outcome.RETRY, f"status 0x{code:04X}"))
            else:
                results.append(SendResult(path, Outcome.REJECTED, f"status 0x{code:04X}"))
        if any(r.outcome is Outcome.RETRY for r in results):
            self.close()  # the next try starts on a fresh association
        return results

    def _store(self, path: Path):  # -> the C-STORE response status (pydicom Dataset), or None
        from pydicom import dcmread
        from pynetdicom.dsutils import split_dataset

        assert self._assoc is not None
        meta, _offset = split_dataset(path)
        key = (str(meta.get("MediaStorageSOPClassUID", "")), str(meta.get("TransferSyntaxUID", "")))
        if key in self._accepted:
            with _reactor_paused(self._wake):
                return self._assoc.send_c_store(path)  # straight from the file, as it is
        ds = dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            # the peer does not take the JPEG SC: uncompressed RGB (Explicit VR Little Endian) instead
            ds.decompress(generate_instance_uid=False)  # the same object: its UID must not change
        with _reactor_paused(self._wake):
            return self._assoc.send_c_store(ds)  # pynetdicom converts to the encoding the peer accepted


def send_dimse(peer: Peer, calling_ae: str, files: list[Path]) -> list[SendResult]:
    """Send the files over one association (opened and released here)."""
    connection = PeerConnection(peer, calling_ae)
    try:
        return connection.send(files)
    finally:
        connection.close()


def send_stow(url: str, files: list[Path], timeout: float = TIMEOUT_S) -> list[SendResult]:
    """POST the files to {url}/studies as one multipart/related request (DICOM PS3.18 STOW-RS)."""
    boundary = uuid.uuid4().hex
    parts = []
    for path in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/studies", data=body, method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
        outcome = Outcome.RETRY if code in (408, 429) or code >= 500 else Outcome.REJECTED
        if code == 409:  # conflict: some instances failed; STOW gives no per-file status we parse here
            outcome = Outcome.RETRY
        return [SendResult(p, outcome, f"HTTP {code}") for p in files]
    except (OSError, urllib.error.URLError) as exc:
        return [SendResult(p, Outcome.RETRY, str(exc)) for p in files]
    if code in (200, 202):
        return [SendResult(p, Outcome.SENT, f"HTTP {code}") for p in files]
    return [SendResult(p, Outcome.RETRY, f"HTTP {code}") for p in files]


@dataclass(frozen=True)
class Destination:
    """Where results go: a peer (C-STORE) or a STOW-RS base URL. `key` names its outbox folder."""

    peer: Peer | None = None
    stow_url: str | None = None

    @property
    def key(self) -> str:
        if self.peer is not None:
            raw = f"dimse-{self.peer.ae_title}@{self.peer.host}-{self.peer.port}"
            return re.sub(r"[^A-Za-z0-9@._-]", "_", raw)
        digest = hashlib.sha256(str(self.stow_url).encode()).hexdigest()[:12]
        return f"stow-{digest}"

    @property
    def label(self) -> str:
        return self.peer.label if self.peer is not None else f"STOW-RS {self.stow_url}"

    def send(self, files: list[Path], calling_ae: str) -> list[SendResult]:
        """One-shot: a new association (or request) for these files."""
        if self.peer is not None:
            return send_dimse(self.peer, calling_ae, files)
        return send_stow(str(self.stow_url), files)

    def sender(self, calling_ae: str) -> Sender:
        """What a sender thread keeps: the files go over one association while there is work."""
        return Sender(self, calling_ae)


class Sender:
    """A destination's sending side for one thread: a kept association to a peer, or STOW-RS requests."""

    def __init__(self, destination: Destination, calling_ae: str) -> None:
        self.destination = destination
        self._connection = PeerConnection(destination.peer, calling_ae) if destination.peer is not None else None

    def send(self, files: list[Path]) -> list[SendResult]:
        if self._connection is not None:
            return self._connection.send(files)
        return send_stow(str(self.destination.stow_url), files)

    def idle(self) -> None:
        """Nothing to send for a while: let the peer go (it may limit associations)."""
        if self._connection is not None:
            self._connection.close()
