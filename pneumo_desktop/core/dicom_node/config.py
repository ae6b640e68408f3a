"""The DICOM node's settings: peers (AE@HOST:PORT), the listener's options and their TOML file.

The file is `dicom_node.toml` in the app's config folder (site_profiles.config_dir(): platformdirs, or
$PNEUMO_DESKTOP_CONFIG_DIR). Its keys are the command line's long options with `_` for `-`; a command-line
value wins over the file. Peers the window sends to are `[[peers]]` tables (name, ae_title, host, port and
optional tls_cert, tls_key, tls_ca); `send_to` may name such a peer or be AE@HOST:PORT.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.site_profiles import config_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

CONFIG_FILE_NAME = "dicom_node.toml"
DEFAULT_PORT = 11112
DEFAULT_AE_TITLE = "PNEUMO"
_AE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 characters, no backslash, no controls


class NodeConfigError(PneumoError):
    """A bad peer, option or config file: one sentence for a person."""


def check_ae_title(text: str) -> str:
    ae = text.strip()
    if not ae or not _AE_CHARS.match(ae):
        raise NodeConfigError(f"{text!r} is not a DICOM AE title (1 to 16 printable characters, no backslash)")
    return ae


@dataclass(frozen=True)
class Peer:
    """Another DICOM node: where results go, or what the window echoes and sends to."""

    ae_title: str
    host: str
    port: int
    name: str = ""
    tls_cert: Path | None = None  # our certificate for this peer (mutual TLS); with tls_key
    tls_key: Path | None = None
    tls_ca: Path | None = None  # the CA that signed the peer's certificate: set for TLS to this peer

    @property
    def uses_tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @property
    def label(self) -> str:
        return self.name or f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Peer:
        """AE@HOST:PORT (an IPv6 host in brackets: AE@[::1]:104)."""
        match = re.match(r"^(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$", text.strip())
        if match is None:
            raise NodeConfigError(f"{text!r} is not a peer: expected AE@HOST:PORT, e.g. ORTHANC@pacs.local:4242")
        return cls(check_ae_title(match["ae"]), match["host"].strip("[]"), check_port(int(match["port"])))

    def as_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "ae_title": self.ae_title, "host": self.host, "port": self.port}
        for key in ("tls_cert", "tls_key", "tls_ca"):
            value = getattr(self, key)
            if value is not None:
                data[key] = str(value)
        return data

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> Peer:
        try:
            paths = {k: Path(str(data[k])) for k in ("tls_cert", "tls_key", "tls_ca") if data.get(k)}
            return cls(check_ae_title(str(data["ae_title"])), str(data["host"]), check_port(int(data["port"])),
                       name=str(data.get("name", "")), **paths)
        except (KeyError, TypeError, ValueError) as exc:
            raise NodeConfigError(f"a [[peers]] entry needs ae_title, host and port ({exc})") from None


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise NodeConfigError(f"port {port} is not between 1 and 65535")
    return port


@dataclass(frozen=True)
class NodeConfig:
    """Everything `pneumo-desktop listen` runs with (defaults, then the TOML file, then the command line)."""

    port: int = DEFAULT_PORT
    ae_title: str = DEFAULT_AE_TITLE
    bind: str = "0.0.0.0"
    allow: tuple[str, ...] = ()  # calling AE titles accepted; empty: any
    send_to: tuple[str, ...] = ()  # AE@HOST:PORT or a peer's name
    stow: str | None = None  # STOW-RS base URL (…/dicom-web): POST {stow}/studies
    spool: Path | None = None  # default: the user's data folder (see default_spool)
    output: Path | None = None  # results CSV (default: <spool>/results.csv)
    profile: str | None = None
    threshold: float | None = None
    model: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # set: callers must present a certificate signed by it
    max_associations: int = 8
    max_instance_mb: float = 256.0
    spool_max_mb: float = 20_480.0  # received + results waiting, in MB
    min_free_mb: float = 512.0  # free disk space the spool leaves
    retry_max_s: float = 60.0  # longest wait between two tries of a destination
    send_associations: int = 4  # concurrent associations (or STOW requests) per destination
    peers: tuple[Peer, ...] = field(default=(), compare=False)

    def destinations(self) -> list[Peer]:
        """`send_to` resolved: a configured peer by name (or AE title), else AE@HOST:PORT."""
        by_name = {p.name: p for p in self.peers if p.name} | {p.ae_title: p for p in self.peers}
        out = []
        for entry in self.send_to:
            out.append(by_name[entry] if entry in by_name else Peer.parse(entry))
        return out

    def spool_dir(self) -> Path:
        return self.spool if self.spool is not None else default_spool()

    def results_csv(self) -> Path:
        return self.output if self.output is not None else self.spool_dir() / "results.csv"


def default_spool() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("pneumo-desktop", appauthor=False)) / "dicom-spool"


def config_path() -> Path:
    return config_dir() / CONFIG_FILE_NAME


_PATH_KEYS = {"spool", "output", "model", "tls_cert", "tls_key", "tls_ca"}
_LIST_KEYS = {"allow", "send_to"}


def load_config(path: Path | None = None) -> NodeConfig:
    """The TOML file's settings over the defaults; a missing file gives the defaults."""
    path = path or config_path()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return NodeConfig()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise NodeConfigError(f"cannot read {path}: {exc}") from None
    return apply(NodeConfig(), data, source=str(path))


def apply(config: NodeConfig, values: dict[str, Any], source: str = "the command line") -> NodeConfig:
    """`config` with `values` (TOML keys or argparse names; None values are ignored) checked and applied."""
    known = {f.name for f in fields(NodeConfig)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if value is None:
            continue
        if key == "peers":
            changes["peers"] = tuple(Peer.from_toml(p) for p in value)
            continue
        if key not in known:
            raise NodeConfigError(f"{source}: unknown setting {key!r}")
        if key in _PATH_KEYS:
            value = Path(os.path.expanduser(str(value)))
        elif key in _LIST_KEYS:
            value = tuple(str(v) for v in ([value] if isinstance(value, str) else value))
            if key == "allow":
                value = tuple(check_ae_title(v) for v in value)
        elif key == "ae_title":
            value = check_ae_title(str(value))
        elif key == "port":
            value = check_port(int(value))
        elif key == "send_associations":
            value = int(value)
            if not 1 <= value <= 16:
                raise NodeConfigError(f"{source}: send_associations must be between 1 and 16, got {value}")
        changes[key] = value
    result = replace(config, **changes)
    if (result.tls_cert is None) != (result.tls_key is None):
        raise NodeConfigError(f"{source}: tls_cert and tls_key go together")
    if result.tls_ca is not None and result.tls_cert is None:
        raise NodeConfigError(f"{source}: tls_ca needs tls_cert and tls_key (the listener's own certificate)")
    result.destinations()  # every send_to entry must resolve to a peer
    return result


# --------------------------------------------------------------------------- writing (peers from the window)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def save_peers(peers: list[Peer], path: Path | None = None) -> Path:
    """Replace the file's [[peers]] and keep its other settings (written to a temporary file, then renamed)."""
    path = path or config_path()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        data = {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise NodeConfigError(f"cannot read {path}: {exc}") from None
    data.pop("peers", None)
    lines = ["# Pneumo Desktop DICOM node (see docs/DICOM_NODE.md); keys as the 'listen' options"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in data.items()]
    for peer in peers:
        lines += ["", "[[peers]]"] + [f"{k} = {_toml_value(v)}" for k, v in peer.as_toml().items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
