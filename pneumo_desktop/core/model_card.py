"""The model card: what the runtime must reproduce and what users should know about the model.

A model folder holds `model_card.json`, `model.tflite` (run by the app with LiteRT) and
`model.keras` (for retraining and Grad-CAM parity checks). Every artefact's sha256 is in the card
and is verified before the model is used.

Optional parts (model v2 and later): a `subtype` section (P(viral | pneumonia), output `p_viral`) and a
`refusal` section (the out-of-distribution limit for output `ood_score`). An older model without
them still loads and scores; it simply gives no subtype and refuses nothing. An optional
`explanation_audit` section carries the explanation audit's development-set figures (shown in the window).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo_desktop.core.calibration import METHOD_PLATT, PlattCalibration
from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.levels import OperatingLevels

CARD_FILENAME = "model_card.json"
TFLITE_FILENAME = "model.tflite"
KERAS_FILENAME = "model.keras"
MANIFEST_FILENAME = "manifest.json"  # sha256 of every artefact, the card included (written at export)
MANIFEST_SCHEMA_VERSION = 1
CARD_SCHEMA_VERSION = 1

# Output names of the exported TFLite signature (the contract between trainer and app).
OUTPUT_PROBABILITY = "probability"  # (N, 1) P(pneumonia), temperature scaling applied
OUTPUT_FEATURE_MAP = "feature_map"  # (N, h, w, C) activations of the Grad-CAM layer
OUTPUT_CAM_WEIGHTS = "cam_weights"  # (N, C) Grad-CAM channel weights (mean gradient of the logit)
# Optional outputs (model v2): used only when the card has the matching section.
OUTPUT_P_VIRAL = "p_viral"  # (N, 1) P(viral | pneumonia)
OUTPUT_OOD_SCORE = "ood_score"  # (N, 1) out-of-distribution score; higher = less like the training X-rays
INPUT_NAME = "image"  # (N, S, S, 3) float32 in 0..255
SIGNATURE_KEY = "serving_default"
# Optional second signature (model.tflite from round 5 on): the same input and the same outputs but the map's
# two, computed by the forward operators alone (a subgraph sharing the weights: no backward pass). Scoring that
# needs no map runs it; its outputs equal serving_default's exactly.
SCORE_SIGNATURE_KEY = "score"
SCORE_OUTPUTS = (OUTPUT_PROBABILITY, OUTPUT_P_VIRAL, OUTPUT_OOD_SCORE)


class ModelIntegrityError(PneumoError):
    """The model folder is missing, incomplete or does not match its card."""


def sha256_of_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SubtypeSpec:
    """The second head: P(viral | pneumonia) and its own operating point."""

    classes: tuple[str, str]  # (below the threshold, at or above it), e.g. ("bacterial", "viral")
    threshold: float
    rule: str

    def label_for(self, p_viral: float) -> str:
        return self.classes[1] if p_viral >= self.threshold else self.classes[0]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubtypeSpec:
        spec = cls(
            classes=(str(data["classes"][0]), str(data["classes"][1])),
            threshold=_finite(data["threshold"]["value"], "subtype threshold"),
            rule=str(data["threshold"].get("rule", "")),
        )
        if not 0.0 <= spec.threshold <= 1.0:
            raise ValueError(f"subtype threshold must be between 0 and 1, got {spec.threshold}")
        if spec.classes[0] == spec.classes[1] or not all(spec.classes):
            raise ValueError(f"subtype classes must be two different names, got {list(spec.classes)}")
        return spec


@dataclass(frozen=True)
class RefusalSpec:
    """Images whose out-of-distribution score is above `limit` are refused (not scored)."""

    limit: float
    method: str
    rule: str
    # Inversion check (model v4 on; None = off): an image whose score is at least this gate is scored a second
    # time with its grey levels inverted; if the inverted copy looks more like a chest X-ray than the image
    # (a lower score), the image is refused as inverted. The gate keeps the second inference off most images.
    inversion_gate: float | None = None

    def refuses(self, ood_score: float) -> bool:
        # a score that is not a number cannot vouch for the image: refuse it
        return not math.isfinite(ood_score) or ood_score > self.limit

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefusalSpec:
        limit = _finite(data["limit"], "refusal limit")
        if not limit > 0:  # OOD scores are distances: a limit <= 0 would refuse every image
            raise ValueError(f"refusal limit must be a positive number, got {limit}")
        inversion = data.get("inversion_check") or {}
        gate = None if inversion.get("gate") is None else _finite(inversion["gate"], "inversion gate")
        if gate is not None and gate < 0:
            raise ValueError(f"inversion gate must not be negative, got {gate}")
        return cls(limit=limit, method=str(data.get("method", "")), rule=str(data.get("rule", "")),
                   inversion_gate=gate)


@dataclass(frozen=True)
class ExplanationAuditSpec:
    """The explanation audit's figures on a development set (docs/EXPLANATIONS.md): how far to trust the map.

    Card section `explanation_audit`: {"data": "test half A (development)", "method": "gradcam",
    "mass_outside_body": 0.23, "outside_area_share": 0.22, "top_random_drop_ratio": 1.7,
    "randomisation_passed": true, "body_flattened_roc_auc": 0.91}; only `data` and `mass_outside_body` are
    required. Absent: the map was never audited for this model.
    """

    data: str
    method: str
    mass_outside_body: float
    outside_area_share: float | None = None
    top_random_drop_ratio: float | None = None
    randomisation_passed: bool | None = None
    body_flattened_roc_auc: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplanationAuditSpec:
        if not isinstance(data, dict):
            raise ValueError(f"explanation_audit must be an object, got {type(data).__name__}")

        def share(name: str, required: bool = False) -> float | None:
            if data.get(name) is None and not required:
                return None
            value = float(data[name])
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"explanation_audit {name} must be between 0 and 1, got {value}")
            return value

        ratio = data.get("top_random_drop_ratio")
        if ratio is not None and not math.isfinite(float(ratio)):
            raise ValueError(f"explanation_audit top_random_drop_ratio {ratio}")
        passed = data.get("randomisation_passed")
        mass = share("mass_outside_body", required=True)
        assert mass is not None  # required above
        return cls(
            data=str(data["data"]), method=str(data.get("method", "gradcam")), mass_outside_body=mass,
            outside_area_share=share("outside_area_share"),
            top_random_drop_ratio=None if ratio is None else float(ratio),
            randomisation_passed=None if passed is None else bool(passed),
            body_flattened_roc_auc=share("body_flattened_roc_auc"),
        )


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    backbone: str
    input_size: int
    preprocessing: str
    class_names: tuple[str, str]
    threshold: float
    threshold_rule: str
    gradcam_layer: str
    temperature: float
    artifacts: dict[str, str]  # file name -> sha256
    intended_use: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    subtype: SubtypeSpec | None = None  # None: the model has no subtype head (older models)
    refusal: RefusalSpec | None = None  # None: the model refuses nothing (older models)
    # Platt scaling applied by the runtime (calibration.method "platt"); None: the output is used as it is
    calibration: PlattCalibration | None = None
    levels: OperatingLevels | None = None  # rule-out / rule-in points (calibrated space); None: no levels
    explanation_audit: ExplanationAuditSpec | None = None
    # How the map is drawn from the exported outputs (core/cam_methods.py): chosen by the explanation audit
    map_method: str = "gradcam"  # None: the map was never audited for this model

    @property
    def positive_class(self) -> str:
        return self.class_names[1]

    @property
    def negative_class(self) -> str:
        return self.class_names[0]

    @property
    def tflite_sha256(self) -> str:
        return self.artifacts[TFLITE_FILENAME]

    def label_for(self, probability: float, threshold: float | None = None) -> str:
        """Label at the operating point (>= threshold is positive)."""
        cut = self.threshold if threshold is None else threshold
        return self.positive_class if probability >= cut else self.negative_class

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Parse and validate a card; anything malformed is a ModelIntegrityError with a one-line reason."""
        if not isinstance(data, dict):
            raise ModelIntegrityError(f"model card is malformed: expected a JSON object, got {type(data).__name__}")
        try:
            card = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                backbone=str(data["backbone"]),
                input_size=int(data["input_size"]),
                preprocessing=str(data["preprocessing"]["id"]),
                class_names=(str(data["class_names"][0]), str(data["class_names"][1])),
                threshold=float(data["threshold"]["value"]),
                threshold_rule=str(data["threshold"]["rule"]),
                gradcam_layer=str(data["gradcam"]["layer"]),
                map_method=str(data["gradcam"].get("map_method", "gradcam")),
                temperature=float((data.get("calibration") or {}).get("temperature", 1.0)),
                artifacts=_artifacts(data["artifacts"]),
                intended_use=str(data["intended_use"]),
                raw=data,
                subtype=SubtypeSpec.from_dict(data["subtype"]) if data.get("subtype") is not None else None,
                refusal=RefusalSpec.from_dict(data["refusal"]) if data.get("refusal") is not None else None,
                calibration=_platt(data.get("calibration")),
                levels=OperatingLevels.from_dict(data["levels"]) if data.get("levels") is not None else None,
                explanation_audit=(ExplanationAuditSpec.from_dict(data["explanation_audit"])
                                   if data.get("explanation_audit") is not None else None),
            )
        except ModelIntegrityError:
            raise
        except KeyError as exc:
            raise ModelIntegrityError(f"model card is malformed: missing field {exc}") from None
        except (TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            raise ModelIntegrityError(f"model card is malformed: invalid field ({exc})") from None
        card._validate()
        return card

    def _validate(self) -> None:
        def bad(what: str) -> ModelIntegrityError:
            return ModelIntegrityError(f"model card is malformed: {what}")

        if not math.isfinite(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise bad(f"threshold must be a number between 0 and 1, got {self.threshold}")
        from pneumo_desktop.core.cam_methods import METHODS  # the map methods this app can draw

        if self.map_method not in METHODS:
            raise bad(f"gradcam.map_method must be one of {', '.join(METHODS)}, got {self.map_method!r}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise bad(f"calibration temperature must be a positive number, got {self.temperature}")
        if not 8 <= self.input_size <= 2048:
            raise bad(f"input_size must be between 8 and 2048 pixels, got {self.input_size}")
        if self.class_names[0] == self.class_names[1] or not all(self.class_names):
            raise bad(f"class_names must be two different names, got {list(self.class_names)}")
        if TFLITE_FILENAME not in self.artifacts:
            raise bad(f"artifacts must list {TFLITE_FILENAME} with its sha256")
        if not self.gradcam_layer.strip():
            raise bad("gradcam.layer must name a layer")
        if not self.preprocessing.strip():
            raise bad("preprocessing.id must name the preprocessing")
        for name in self.artifacts:
            if Path(name).name != name or name in (CARD_FILENAME, MANIFEST_FILENAME):
                raise bad(f"artifact {name!r} must be a plain file name in the model folder")
        reference = self.raw.get("sample_reference")
        if reference is not None:
            tolerance = reference.get("tolerance", 1e-3) if isinstance(reference, dict) else None
            if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
                raise bad(f"sample_reference.tolerance must be a number in [0, 1), got {tolerance!r}")


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value}")
    return number


def _platt(section: Any) -> PlattCalibration | None:
    """The card's Platt scaling; a section without method "platt" (temperature only, inside the graph) is none."""
    if isinstance(section, dict) and str(section.get("method", "")).lower() == METHOD_PLATT:
        return PlattCalibration.from_dict(section)
    return None


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _artifacts(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ModelIntegrityError(
            f"model card is malformed: artifacts must map file names to their sha256, got {type(value).__name__}"
        )
    artifacts = {}
    for name, entry in value.items():
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha.lower()):
            raise ModelIntegrityError(f"model card is malformed: artifact {name!r} has no valid sha256")
        artifacts[str(name)] = sha.lower()
    return artifacts


def load_model_card(model_dir: Path) -> ModelCard:
    card_path = Path(model_dir) / CARD_FILENAME
    if not card_path.is_file():
        raise ModelIntegrityError(f"no {CARD_FILENAME} in {model_dir}: not a Pneumo Desktop model folder")
    try:
        # NaN/Infinity are not JSON; Python would accept them and a NaN threshold labels nothing
        data = json.loads(card_path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except OSError as exc:
        raise ModelIntegrityError(f"cannot read {card_path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelIntegrityError(f"cannot read {card_path}: the model card is malformed: {exc}") from None
    return ModelCard.from_dict(data)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def verify_artifacts(model_dir: Path, card: ModelCard, names: tuple[str, ...] | None = None) -> None:
    """Check the sha256 of each artefact (or only `names`) against the card."""
    model_dir = Path(model_dir)
    for name in names or tuple(card.artifacts):
        expected = card.artifacts.get(name)
        if expected is None:
            raise ModelIntegrityError(f"model card lists no sha256 for {name}")
        path = model_dir / name
        if not path.is_file():
            raise ModelIntegrityError(f"model file {path} is missing; reinstall or re-export the model")
        actual = sha256_of_file(path)
        if actual != expected:
            raise ModelIntegrityError(
                f"model file {path} is corrupted or was changed: sha256 {actual[:12]}... "
                f"does not match the model card ({expected[:12]}...); reinstall or re-export the model"
            )


# --------------------------------------------------------------------------- the manifest


def manifest_names(card: ModelCard) -> tuple[str, ...]:
    """What the manifest covers: the card and every artefact it lists."""
    return (CARD_FILENAME, *sorted(card.artifacts))


def write_manifest(model_dir: Path) -> Path:
    """Write manifest.json (sha256 of the card and of every artefact the card lists) into a model folder.

    Called by the trainer's export, and for an existing folder by scripts/write_model_manifest.py. The card
    must already be valid and its artefacts match it: a manifest never vouches for a broken folder.
    """
    model_dir = Path(model_dir)
    card = load_model_card(model_dir)
    verify_artifacts(model_dir, card, tuple(name for name in card.artifacts if (model_dir / name).is_file()))
    files = {name: sha256_of_file(model_dir / name) for name in manifest_names(card) if (model_dir / name).is_file()}
    manifest = {"schema_version": MANIFEST_SCHEMA_VERSION, "algorithm": "sha256", "files": files}
    path = model_dir / MANIFEST_FILENAME
    tmp = path.with_name(f".{MANIFEST_FILENAME}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(model_dir: Path) -> dict[str, str]:
    path = Path(model_dir) / MANIFEST_FILENAME
    if not path.is_file():
        raise ModelIntegrityError(
            f"no {MANIFEST_FILENAME} in {model_dir}: the model card is not covered by a checksum; reinstall or "
            "re-export the model (or write one with scripts/write_model_manifest.py)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError("files must be an object")
        manifest = {}
        for name, sha in files.items():
            if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha.lower()):
                raise ValueError(f"{name!r} has no valid sha256")
            manifest[str(name)] = sha.lower()
    except OSError as exc:
        raise ModelIntegrityError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError, AttributeError) as exc:
        raise ModelIntegrityError(f"{path} is malformed: {exc}") from None
    return manifest


def verify_manifest(model_dir: Path, card: ModelCard, required: tuple[str, ...] = (CARD_FILENAME,)) -> list[str]:
    """Check every file the manifest lists that is present (and `required` ones, which must be) against it.

    The manifest must cover the card and every artefact the card lists. Returns the names checked.
    """
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    uncovered = [name for name in manifest_names(card) if name not in manifest]
    if uncovered:
        raise ModelIntegrityError(
            f"{model_dir / MANIFEST_FILENAME} does not cover {', '.join(uncovered)}; reinstall or re-export the model"
        )
    checked = []
    for name, expected in manifest.items():
        path = model_dir / name
        if Path(name).name != name:
            raise ModelIntegrityError(f"{model_dir / MANIFEST_FILENAME} names a file outside the folder: {name!r}")
        if not path.is_file():
            if name in required:
                raise ModelIntegrityError(f"model file {path} is missing; reinstall or re-export the model")
            continue  # e.g. model.keras, which a packaged app does not ship
        actual = sha256_of_file(path)
        if actual != expected:
            what = "the model card" if name == CARD_FILENAME else "model file"
            raise ModelIntegrityError(
                f"{what} {path} was changed after export: sha256 {actual[:12]}... does not match {MANIFEST_FILENAME} "
                f"({expected[:12]}...); its values cannot be trusted: reinstall or re-export the model"
            )
        checked.append(name)
    return checked
