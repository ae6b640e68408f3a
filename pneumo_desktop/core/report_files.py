"""Writing report files: JSON that stays valid (undefined figures become null) and files that are never half
written. Shared by the evaluation report and the explanation audit's report."""

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
