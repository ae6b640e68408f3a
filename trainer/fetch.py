"""Fetch the Kaggle "Chest X-Ray Images (Pneumonia)" dataset into ROOT/{train,val,test}/{NORMAL,PNEUMONIA}.

Needs network access and the `kaggle` package with credentials (~/.kaggle/kaggle.json). Offline, or without the
package, it stops with a message saying so; nothing is half-written into ROOT.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"


def fetch_dataset(out_dir: Path) -> Path:
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(
            "fetching needs the 'kaggle' package (pip install kaggle) and Kaggle API credentials"
        ) from exc
    api = KaggleApi()
    try:
        api.authenticate()
        with tempfile.TemporaryDirectory(dir=out_dir.parent if out_dir.parent.exists() else None) as tmp:
            api.dataset_download_files(KAGGLE_DATASET, path=tmp, unzip=True, quiet=False)
            candidates = [p for p in Path(tmp).rglob("train") if (p / "NORMAL").is_dir()]
            if not candidates:
                raise RuntimeError("the download does not contain train/NORMAL: unexpected archive layout")
            root = candidates[0].parent
            out_dir.mkdir(parents=True, exist_ok=True)
            for split in ("train", "val", "test"):
                if (root / split).is_dir():
                    shutil.move(str(root / split), str(out_dir / split))
    except RuntimeError:
        raise
    except Exception as exc:  # network and auth errors come in many types
        raise RuntimeError(f"could not download {KAGGLE_DATASET} (offline or no credentials?): {exc}") from exc
    log.info("dataset ready in %s", out_dir)
    return out_dir
