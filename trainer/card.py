"""Builds the model card dictionary that trainer.export writes next to the model."""

from __future__ import annotations

import platform
import sys
from typing import Any

from pneumo_desktop import RESEARCH_USE_STATEMENT, __version__
from pneumo_desktop.core.preprocess import PREPROCESSING_DESCRIPTION, PREPROCESSING_ID

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
DATA_ATTRIBUTION = (
    "Chest X-Ray Images (Pneumonia): Kermany D.S., Goldbaum M., Cai W., et al. Identifying Medical Diagnoses and "
    "Treatable Diseases by Image-Based Deep Learning. Cell 172(5):1122-1131.e9, 2018. Data: Mendeley Data, "
    "Kermany, Zhang, Goldbaum (2018), CC BY 4.0."
)


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "pneumo_desktop": __version__,
        "platform": platform.platform(),
    }


def build_card(
    *,
    name: str,
    version: str,
    backbone: str,
    input_size: int,
    threshold: float,
    threshold_rule: str,
    gradcam_layer: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "backbone": backbone,
        "input_size": int(input_size),
        "preprocessing": {"id": PREPROCESSING_ID, "description": PREPROCESSING_DESCRIPTION},
        "class_names": list(CLASS_NAMES),
        "output": "probability of PNEUMONIA (sigmoid of logit / temperature)",
        "threshold": {"value": float(threshold), "rule": threshold_rule},
        "gradcam": {
            "layer": gradcam_layer,
            "method": "Grad-CAM (Selvaraju et al. 2017) on the pre-sigmoid logit; channel weights computed "
            "exactly inside the TFLite graph",
        },
        "intended_use": RESEARCH_USE_STATEMENT,
        "data_attribution": DATA_ATTRIBUTION,
        "versions": _versions(),
    }
    card.update(extra or {})
    return card
