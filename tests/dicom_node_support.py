"""Real DICOM software for the node's tests and benchmark: Orthanc, DCMTK's storescu/echoscu, the listener.

Each tool is found on PATH; without it a test skips, except in CI (CI=true), where it fails: .ci/run installs
them (Debian packages orthanc, orthanc-dicomweb, dcmtk, dicom3tools).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require_tool(name: str) -> str:
    """The tool's path; skip without it (fail in CI, which installs it)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        message = f"{name} is not installed (Debian packages orthanc, orthanc-dicomweb, dcmtk, dicom3tools)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before opening port {port}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@dataclass
class Orthanc:
    process: subprocess.Popen
    http_port: int
    dicom_port: int
    ae_title: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post_find(self, study_uid: str) -> list[str]:
        """The modalities of the series Orthanc holds in that study."""
        request = urllib.request.Request(
            self.url + "/tools/find", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            return [s["MainDicomTags"]["Modality"] for s in json.loads(response.read())]

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance with its main tags (SOPClassUID, StudyInstanceUID, ...)."""
        return [self.get(f"/instances/{iid}/simplified-tags") for iid in self.get("/instances")]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_orthanc(folder: Path, listener_ae: str = "PNEUMO", listener_port: int = 11112,
                  dicom_port: int | None = None) -> Orthanc:
    """Orthanc on free localhost ports, with a temporary config and storage in `folder`."""
    binary = require_tool("Orthanc")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config: dict[str, Any] = {
        "Name": "pneumo-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpServerEnabled": True, "StorageCompression": False,
        "DicomModalities": {"pneumo": [listener_ae, "127.0.0.1", listener_port]},
        "DicomCheckCalledAet": False, "UnknownSopClassAccepted": True, "ConcurrentJobs": 1,
        "DicomScpTimeout": 30, "HttpThreadsCount": 4, "DicomThreadsCount": 4,
    }
    if ORTHANC_DICOMWEB.exists():
        config["Plugins"] = [str(ORTHANC_DICOMWEB)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(http_port, process=process)
        wait_for_port(dicom_port, process=process)
    except Exception:
        process.kill()
        raise
    return Orthanc(process, http_port, dicom_port)


@dataclass
class Listener:
    process: subprocess.Popen
    port: int
    log_path: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_listener(spool: Path, port: int, *args: str, config_dir: Path | None = None, log_name: str = "listen.log",
                   ) -> Listener:
    """`pneumo-desktop listen` as its own process (it is killed with SIGKILL in the tests)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["PNEUMO_DESKTOP_CONFIG_DIR"] = str(config_dir or spool.parent / "config")
    log_path = spool.parent / log_name
    log = open(log_path, "ab")
    cmd = [sys.executable, "-m", "pneumo_desktop", "listen", "--port", str(port), "--spool", str(spool),
           "--bind", "127.0.0.1", "-v", *args]
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_for_port(port, timeout=60, process=process)
    except Exception:
        process.kill()
        raise RuntimeError("listener did not start:\n" + log_path.read_text(errors="replace")) from None
    return Listener(process, port, log_path)


def storescu(port: int, files: list[Path], *, calling: str = "MODALITY", called: str = "PNEUMO",
             timeout: float = 120) -> subprocess.CompletedProcess:
    binary = require_tool("storescu")
    return subprocess.run([binary, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, *, calling: str = "MODALITY", called: str = "PNEUMO") -> subprocess.CompletedProcess:
    binary = require_tool("echoscu")
    return subprocess.run([binary, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def wait_until(condition, timeout: float, interval: float = 0.2) -> bool:
    """Poll `condition()` until it is true (a bound on waiting for other processes, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
