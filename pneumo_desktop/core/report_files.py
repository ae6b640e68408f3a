"""Writing files that are never half written, and JSON that stays valid (undefined figures become null). Shared by
the evaluation and audit reports (write_atomic), merged shard results and the DICOM node's spool (write_durably)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None  # an undefined metric (e.g. precision with no positive calls): null, not JSON-invalid NaN
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(_finite_or_none(data), indent=2, allow_nan=False)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write through a temporary file beside `path` and rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_durably(target: Path, data: bytes, tmp: Path) -> None:
    """Write `data` to `tmp` (same file system as `target`), fsync it and rename it into place: after a crash
    `target` is either the old file or the whole new one. The folder's own fsync is the caller's."""
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
