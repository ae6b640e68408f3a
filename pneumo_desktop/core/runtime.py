"""Inference with the exported model (LiteRT): probabilities and Grad-CAM, without TensorFlow.

One PneumoniaModel owns one LiteRT interpreter; a lock serialises its use, so the GUI's workers and
the batch scorer may share it. Inputs are batched by resizing the (dynamic) batch dimension.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from pneumo_desktop.core import model_card as mc
from pneumo_desktop.core.calibration import PlattCalibration
from pneumo_desktop.core.cam_methods import DEFAULT_METHOD, map_at
from pneumo_desktop.core.imaging import LoadedImage
from pneumo_desktop.core.levels import LevelBand, OperatingLevels
from pneumo_desktop.core.model_card import ModelCard, ModelIntegrityError
from pneumo_desktop.core.preprocess import prepare_input, prepare_input_into
from pneumo_desktop.core.resources import bundled_model_dir
from pneumo_desktop.core.site_profiles import SOURCE_CARD, ThresholdChoice

log = logging.getLogger(__name__)

# LiteRT on CPU gains little per image from bigger batches; 8 keeps the padded last batch cheap.
DEFAULT_BATCH_SIZE = 8

# An engine runs one batch (N, S, S, 3) float32 and returns the signature's outputs by name.
Engine = Callable[[np.ndarray], dict[str, np.ndarray]]


STATUS_SCORED = "scored"
STATUS_REFUSED = "refused"
STATUS_ERROR = "error"  # used by batch rows for files that could not be read or scored


INVERTED_REASON = (
    "looks inverted (bone dark, air bright): check the photometric interpretation (MONOCHROME1/MONOCHROME2) "
    "of the export"
)


def refusal_reason(ood_score: float, limit: float) -> str:
    return (
        "does not look like a frontal chest X-ray: "
        f"out-of-distribution score {_short(ood_score)}, limit {_short(limit)}"
    )


def _short(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) and abs(value) < 10 else f"{value:.1f}"


@dataclass(frozen=True)
class Prediction:
    path: Path | None
    probability: float | None  # P(PNEUMONIA), calibrated when the card (or profile) has Platt; None when refused
    label: str | None  # "NORMAL" | "PNEUMONIA" at `threshold`; None when refused
    threshold: float
    model_name: str
    model_version: str
    model_sha256: str  # sha256 of model.tflite
    status: str = STATUS_SCORED  # STATUS_SCORED | STATUS_REFUSED
    ood_score: float | None = None  # None: the model has no out-of-distribution output
    ood_limit: float | None = None  # the card's refusal limit (None: the model refuses nothing)
    refusal_reason: str | None = None  # why it is (or, when overridden, would have been) refused
    overridden: bool = False  # scored although it would have been refused (refuse=False)
    p_viral: float | None = None  # P(viral | pneumonia): only for PNEUMONIA labels that are not refused
    subtype: str | None = None  # "bacterial" | "viral" at the subtype threshold, same condition
    threshold_source: str = SOURCE_CARD  # "card", "command-line", "profile:<name>" or "explicit" (a caller's value)
    raw_probability: float | None = None  # the model's own output before calibration (None when refused)
    level: str | None = None  # "low" | "indeterminate" | "high" (levels.py); None: refused, or no levels in the card
    level_band: LevelBand | None = None  # the level's band and the operating figures behind it

    @property
    def refused(self) -> bool:
        return self.status == STATUS_REFUSED

    @property
    def level_source(self) -> str | None:
        """Where the level's points come from: "card" or "profile:<name>" (None: no level)."""
        return self.level_band.source if self.level_band is not None else None


@dataclass(frozen=True)
class Explanation:
    prediction: Prediction
    # float32 (H, W) in 0..1 at the original image resolution; None for a refused image (no map is
    # drawn for what the model cannot read, unless the refusal is overridden)
    cam: np.ndarray | None = field(repr=False)
    # share of the map's mass inside the patient's body (explanation_audit.with_body_share); None: not computed
    body_share: float | None = None


class Extras(TypedDict):
    """The optional outputs of one image, as keyword arguments of PneumoniaModel.prediction()."""

    p_viral: float | None
    ood_score: float | None
    looks_inverted: bool


@dataclass(frozen=True)
class RawOutputs:
    """The model's outputs for one batch."""

    probability: np.ndarray  # (N,) float32
    feature_map: np.ndarray | None  # (N, h, w, C) float32; None when run without maps
    cam_weights: np.ndarray | None  # (N, C) float32; None when run without maps
    p_viral: np.ndarray | None = None  # (N,) float32, when the model has a subtype head
    ood_score: np.ndarray | None = None  # (N,) float32, when the model has a refusal limit
    looks_inverted: np.ndarray | None = None  # (N,) bool, when the card has an inversion check
    map_method: str = DEFAULT_METHOD  # the card's map method (core/cam_methods.py)

    def map_parts(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature map (h, w, C), channel weights (C,)) of one image."""
        if self.feature_map is None or self.cam_weights is None:
            raise ValueError("these outputs were computed without maps (PneumoniaModel.run(..., maps=False))")
        return self.feature_map[index], self.cam_weights[index]

    def cam(self, index: int, height: int, width: int) -> np.ndarray:
        """The map of one image at (height, width), float32 in 0..1, by the card's method."""
        return map_at(*self.map_parts(index), height, width, self.map_method)

    def extras(self, index: int) -> Extras:
        """The optional outputs of one image, as keyword arguments of PneumoniaModel.prediction()."""
        return {
            "p_viral": None if self.p_viral is None else float(self.p_viral[index]),
            "ood_score": None if self.ood_score is None else float(self.ood_score[index]),
            "looks_inverted": bool(self.looks_inverted is not None and self.looks_inverted[index]),
        }


class LiteRTEngine:
    """The serving_default signature of model.tflite; checks the signature against the contract.

    Resizing an interpreter's batch dimension re-allocates its tensors while holding the GIL (75-85 ms
    for the bundled model), which froze the GUI whenever single-image requests and batch scoring
    alternated. So there are two interpreters, each allocated once at load: one for single images and
    one for full batches. A shorter batch goes image by image through the first: padded to the second's size
    it would cost as much as a full batch (three images in a batch of eight cost eight), and the
    single-image interpreter gives the same outputs.

    The score signature's runners (scoring without the map) are made at their first use, and checked then:
    their batch-size tensors (~15 MB) are not held by the window or the DICOM node, which draw a map for every
    image. Its weights are packed when each interpreter is created, whatever is used: a model file with the
    score signature costs ~50 MB more memory at load (284 vs 234 MB measured for the bundled model), the price
    of ~30% less work per image scored without a map.
    """

    def __init__(self, tflite_path: Path, input_size: int, num_threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        threads = num_threads or os.cpu_count() or 1
        self._tflite_path, self.num_threads, self.batch_size = tflite_path, threads, max(1, int(batch_size))
        self.input_size = input_size
        signatures, self._interpreter, self._runner = self._open()
        sig = signatures.get(mc.SIGNATURE_KEY)
        wanted = {mc.OUTPUT_PROBABILITY, mc.OUTPUT_FEATURE_MAP, mc.OUTPUT_CAM_WEIGHTS}
        if sig is None or list(sig["inputs"]) != [mc.INPUT_NAME] or not wanted <= set(sig["outputs"]):
            raise ModelIntegrityError(
                f"{tflite_path} does not follow the model contract: expected signature '{mc.SIGNATURE_KEY}' with "
                f"input '{mc.INPUT_NAME}' and outputs {sorted(wanted)}, found {signatures}"
            )
        score = signatures.get(mc.SCORE_SIGNATURE_KEY)
        if score is not None and (list(score["inputs"]) != [mc.INPUT_NAME]
                                  or not set(score["outputs"]) <= set(mc.SCORE_OUTPUTS)):
            raise ModelIntegrityError(f"{tflite_path}: signature '{mc.SCORE_SIGNATURE_KEY}' does not follow the "
                                      f"model contract: {score}")
        self._has_score = score is not None
        self._score_runner: Any = None  # both made at the score signature's first use (score())
        self._batch_score_runner: Any = None
        detail = self._runner.get_input_details()[mc.INPUT_NAME]
        shape = [int(v) for v in detail.get("shape_signature", detail["shape"])]
        if len(shape) != 4 or shape[1:] != [input_size, input_size, 3]:
            raise ModelIntegrityError(
                f"{tflite_path} takes input {shape}, but the model card says {input_size}x{input_size}x3"
            )
        self.output_names = frozenset(sig["outputs"])
        self.dynamic_batch = shape[0] == -1
        self._batch_interpreter, self._batch_runner = self._interpreter, self._runner
        self._on_zeros = self._check_outputs(tflite_path, input_size)
        if self.dynamic_batch and self.batch_size > 1:
            _, self._batch_interpreter, self._batch_runner = self._open()
            # allocated for the batch size now, not at the first batch
            self._batch_runner(**{mc.INPUT_NAME: np.zeros((self.batch_size, input_size, input_size, 3), np.float32)})

    @property
    def scores_without_maps(self) -> bool:
        """Whether score() runs the score signature (the forward pass alone) rather than the full one."""
        return self._has_score

    def _open(self) -> tuple[dict[str, Any], Any, Any]:
        """A new interpreter: its signature list, the interpreter, and its runner for the contract's signature
        (None if absent).

        A runner is ai_edge_litert's SignatureRunner (untyped): called with the input by name, it returns the
        outputs by name; it also answers get_input_details()."""
        from ai_edge_litert.interpreter import Interpreter

        try:
            interpreter = Interpreter(model_path=str(self._tflite_path), num_threads=self.num_threads)
            signatures = interpreter.get_signature_list()
            runner = interpreter.get_signature_runner(mc.SIGNATURE_KEY) if mc.SIGNATURE_KEY in signatures else None
            return signatures, interpreter, runner
        except (ValueError, RuntimeError) as exc:
            raise ModelIntegrityError(f"{self._tflite_path} is not a valid TFLite model: {exc}") from exc

    def _check_outputs(self, tflite_path: Path, input_size: int) -> dict[str, np.ndarray]:
        """One warm-up run: a graph that cannot run, or returns the wrong shapes, is refused at load time
        (and the first real image does not pay for the delegate's set-up). Returns its outputs."""
        try:
            out = self(np.zeros((1, input_size, input_size, 3), np.float32))
        except (ValueError, RuntimeError) as exc:
            raise ModelIntegrityError(f"{tflite_path} cannot run: {exc}") from exc
        p, fmap, w = (np.asarray(out[k]) for k in (mc.OUTPUT_PROBABILITY, mc.OUTPUT_FEATURE_MAP, mc.OUTPUT_CAM_WEIGHTS))
        if p.size != 1 or fmap.ndim != 4 or w.shape != (1, fmap.shape[-1]):
            raise ModelIntegrityError(
                f"{tflite_path} returns outputs of unexpected shapes: probability {p.shape}, "
                f"feature_map {fmap.shape}, cam_weights {w.shape}"
            )
        for name in (mc.OUTPUT_P_VIRAL, mc.OUTPUT_OOD_SCORE):
            if name in out and np.asarray(out[name]).size != 1:
                raise ModelIntegrityError(
                    f"{tflite_path} returns output {name} of shape {np.asarray(out[name]).shape}, expected (1, 1)"
                )
        return out

    def _start_scoring(self) -> None:
        """The single-image score runner, checked against the full signature on the load-time input: the same
        operators on the same weights must give the same numbers. If they do not (a delegate that fuses the
        smaller graph otherwise on some CPU, or a damaged file), the full signature scores everything: slower,
        never different."""
        try:
            runner = self._interpreter.get_signature_runner(mc.SCORE_SIGNATURE_KEY)
            scores = runner(**{mc.INPUT_NAME: np.zeros((1, self.input_size, self.input_size, 3), np.float32)})
            same = set(scores) == set(mc.SCORE_OUTPUTS) & self.output_names and all(
                np.allclose(np.asarray(scores[name]), np.asarray(self._on_zeros[name]), rtol=1e-5, atol=1e-6)
                for name in scores)
        except (ValueError, RuntimeError) as exc:
            runner, same = None, False
            log.warning("%s: signature '%s' cannot run (%s)", self._tflite_path, mc.SCORE_SIGNATURE_KEY, exc)
        if not same:
            log.warning("%s: signature '%s' does not give the outputs of '%s'; scoring uses the full signature",
                        self._tflite_path, mc.SCORE_SIGNATURE_KEY, mc.SIGNATURE_KEY)
            self._has_score = False
            return
        self._score_runner = runner

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the contract's signature, the map's included."""
        return self._invoke(batch, self._runner, self._batch_runner)

    def score(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs but the map's (probability, P(viral), refusal score), by the score signature when the file
        has one (no backward pass: ~30% less work for the bundled model), else by the full one. Not thread-safe
        (neither is __call__): PneumoniaModel calls both under its lock."""
        if self._has_score and self._score_runner is None:
            self._start_scoring()
        if not self._has_score:
            return self(batch)
        if batch.shape[0] >= self.batch_size and self.dynamic_batch and self._batch_score_runner is None:
            self._batch_score_runner = self._batch_interpreter.get_signature_runner(mc.SCORE_SIGNATURE_KEY)
        return self._invoke(batch, self._score_runner, self._batch_score_runner)

    def _invoke(self, batch: np.ndarray, runner: Any, batch_runner: Any) -> dict[str, np.ndarray]:
        count = batch.shape[0]
        if count == 1:
            return runner(**{mc.INPUT_NAME: batch})
        if not self.dynamic_batch or count < self.batch_size:
            parts = [runner(**{mc.INPUT_NAME: batch[i : i + 1]}) for i in range(count)]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        # (a batch larger than batch_size resizes this runner; PneumoniaModel never sends one)
        return batch_runner(**{mc.INPUT_NAME: batch})  # outputs are returned as copies


def _check_optional_outputs(model_dir: Path, card: ModelCard, outputs: frozenset[str]) -> None:
    """A card that promises a subtype or a refusal limit needs the graph outputs behind them."""
    needed = [(card.subtype, mc.OUTPUT_P_VIRAL, "subtype"), (card.refusal, mc.OUTPUT_OOD_SCORE, "refusal")]
    for section, output, name in needed:
        if section is not None and output not in outputs:
            raise ModelIntegrityError(
                f"{model_dir}: the model card has a '{name}' section but model.tflite has no '{output}' output; "
                "re-export the model"
            )
    for output, name in ((mc.OUTPUT_P_VIRAL, "subtype"), (mc.OUTPUT_OOD_SCORE, "refusal")):
        if output in outputs and getattr(card, name) is None:
            log.warning("%s: model.tflite has a '%s' output but the card no '%s' section; it is ignored",
                        model_dir, output, name)


class PneumoniaModel:
    """The pneumonia classifier with Grad-CAM. Thread-safe."""

    def __init__(self, model_dir: Path, card: ModelCard, engine: Engine, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.model_dir = Path(model_dir)
        self.card = card
        self.batch_size = max(1, int(batch_size))
        self._engine = engine
        self._lock = threading.Lock()
        # The threshold used when a caller passes none: the card's, or a site profile's (use_operating_point).
        self.operating_point = ThresholdChoice(card.threshold, SOURCE_CARD)
        # Platt scaling of the output and the three levels: the card's, or a site profile's while it is in use.
        self.calibration: PlattCalibration | None = card.calibration
        self.levels: OperatingLevels | None = card.levels

    @classmethod
    def load(cls, model_dir: Path | None = None, num_threads: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE) -> PneumoniaModel:
        """Load a model folder (default: the bundled model) after checking model.tflite against its card."""
        model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
        if not model_dir.is_dir():
            raise ModelIntegrityError(f"model folder {model_dir} does not exist; reinstall or pass a model folder")
        card = mc.load_model_card(model_dir)
        # Only what runs is verified: a packaged app ships model.tflite and the card, not model.keras.
        mc.verify_artifacts(model_dir, card, names=(mc.TFLITE_FILENAME,))
        # the card itself (threshold, refusal limit...) is covered by the manifest, as is every artefact present
        mc.verify_manifest(model_dir, card, required=(mc.CARD_FILENAME, mc.TFLITE_FILENAME))
        engine = LiteRTEngine(model_dir / mc.TFLITE_FILENAME, card.input_size, num_threads, batch_size)
        _check_optional_outputs(model_dir, card, engine.output_names)
        log.info("loaded model %s %s from %s (%d threads)", card.name, card.version, model_dir, engine.num_threads)
        return cls(model_dir, card, engine, engine.batch_size)  # the size its batch interpreter holds

    # ---------------------------------------------------------------- properties

    @property
    def sha256(self) -> str:
        return self.card.tflite_sha256

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def scores_without_maps(self) -> bool:
        """Whether run(..., maps=False) skips the map's computation (the model file's score signature)."""
        return bool(getattr(self._engine, "scores_without_maps", False))

    def use_operating_point(self, choice: ThresholdChoice) -> None:
        """Make `choice` (from site_profiles.resolve_threshold) the default threshold of every prediction, with
        its calibration and levels when it has them (a site profile), else the card's."""
        calibration = choice.calibration if choice.calibration is not None else self.card.calibration
        if choice.levels is not None:
            levels: OperatingLevels | None = choice.levels
        else:  # the card's points are on the card's calibration: meaningless under a profile's own
            levels = self.card.levels if choice.calibration is None else None
        if choice.raw_space and choice.calibration is None and self.card.calibration is not None:
            # a profile fitted on the uncalibrated output: the same cut, expressed on the calibrated probability
            choice = replace(choice, value=self.card.calibration.apply_one(choice.value), raw_space=False)
        self._threshold(choice.value)  # validates
        self.operating_point = choice
        self.calibration, self.levels = calibration, levels

    def with_operating_point(self, choice: ThresholdChoice) -> PneumoniaModel:
        """This model with `choice` as its operating point (calibration and levels too), leaving this one as it is:
        the copy shares the interpreter and its lock, so a background job can score under another profile (or the
        card's) while the window keeps its own."""
        view = copy.copy(self)
        view.use_operating_point(choice)
        return view

    def calibrate(self, raw_probability: np.ndarray) -> np.ndarray:
        """The calibrated probabilities (the calibration in use) of raw model outputs."""
        p = np.asarray(raw_probability, dtype=np.float64)
        return self.calibration.apply(p) if self.calibration is not None else p

    def describe(self) -> str:
        return f"{self.card.name} {self.card.version}"

    # ---------------------------------------------------------------- low level (used by batch scoring)

    def prepare(self, image: LoadedImage | np.ndarray) -> np.ndarray:
        """The model input for one image: the shared preprocessing, never a copy of it."""
        grey = image.grey if isinstance(image, LoadedImage) else image
        return prepare_input(grey, self.card.input_size)

    def prepare_into(self, grey: np.ndarray, out: np.ndarray) -> np.ndarray:
        """prepare() written into `out`, a slot of a batch buffer (batch scoring: no per-image copies)."""
        return prepare_input_into(grey, self.card.input_size, out)

    def run(self, batch: np.ndarray, maps: bool = True) -> RawOutputs:
        """Run prepared inputs (N, S, S, 3) float32; returns the raw outputs. Without `maps`, the outputs have no
        feature map and weights, and the engine may skip computing them (LiteRTEngine.score)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected inputs (N, {self.input_size}, {self.input_size}, 3), got {batch.shape}")
        with self._lock:
            out = self._engine(batch) if maps else self._scores(batch)
        probability = np.asarray(out[mc.OUTPUT_PROBABILITY], dtype=np.float32).reshape(-1)
        if probability.shape[0] != batch.shape[0] or not np.all(np.isfinite(probability)):
            raise RuntimeError(f"the model returned invalid probabilities {probability!r}")
        # The optional outputs are read only when the card says how to use them.
        p_viral = self._optional(out, mc.OUTPUT_P_VIRAL, batch.shape[0]) if self.card.subtype else None
        ood = self._optional(out, mc.OUTPUT_OOD_SCORE, batch.shape[0]) if self.card.refusal else None
        return RawOutputs(
            looks_inverted=self._inversion_check(batch, ood),
            probability=np.clip(probability, 0.0, 1.0),
            feature_map=np.asarray(out[mc.OUTPUT_FEATURE_MAP], dtype=np.float32) if maps else None,
            cam_weights=np.asarray(out[mc.OUTPUT_CAM_WEIGHTS], dtype=np.float32) if maps else None,
            p_viral=None if p_viral is None else np.clip(p_viral, 0.0, 1.0),
            ood_score=ood,  # not clipped: a non-finite score is refused (RefusalSpec.refuses)
            map_method=self.card.map_method,
        )

    def _inversion_check(self, batch: np.ndarray, ood: np.ndarray | None) -> np.ndarray | None:
        """Which images look inverted: their grey-inverted copy scores as more X-ray-like (lower OOD score).

        On test half A (development) every upright X-ray scored lower than its inverted copy (model v3: by 0.29
        at least), so upright films are not refused by this; only images at or above the card's gate pay the
        second inference."""
        gate = None if self.card.refusal is None else self.card.refusal.inversion_gate
        if gate is None or ood is None:
            return None
        flagged = np.zeros(batch.shape[0], bool)
        suspects = np.flatnonzero(~(ood < gate))  # NaN scores are suspects too
        if suspects.size:
            with self._lock:  # a few suspects run image by image (LiteRTEngine), not as a padded batch
                out = self._scores(np.ascontiguousarray(255.0 - batch[suspects], dtype=np.float32))
            inverted_ood = self._optional(out, mc.OUTPUT_OOD_SCORE, suspects.size)
            flagged[suspects] = inverted_ood < ood[suspects]
        return flagged

    def _scores(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's outputs without the map's, by its score signature when it has one (LiteRTEngine.score)."""
        score = getattr(self._engine, "score", None)
        return score(batch) if score is not None else self._engine(batch)

    @staticmethod
    def _optional(out: dict[str, np.ndarray], name: str, count: int) -> np.ndarray:
        if name not in out:
            raise RuntimeError(f"the model card expects an output '{name}' that the model did not return")
        values = np.asarray(out[name], dtype=np.float32).reshape(-1)
        if values.shape[0] != count:
            raise RuntimeError(f"the model returned {values.shape[0]} values of '{name}' for {count} images")
        return values

    def prediction(
        self,
        path: Path | None,
        probability: float,
        threshold: float | None = None,
        *,
        p_viral: float | None = None,
        ood_score: float | None = None,
        looks_inverted: bool = False,
        refuse: bool = True,
    ) -> Prediction:
        """One image's result from its raw outputs (`probability` is the model's own, uncalibrated): refusal first,
        then calibration, the label and the level, then the subtype."""
        cut = self._threshold(threshold)
        card = self.card
        base: dict[str, Any] = dict(
            path=path,
            threshold=cut,
            model_name=card.name,
            model_version=card.version,
            model_sha256=self.sha256,
            threshold_source=self.operating_point.source if threshold is None else "explicit",
        )
        limit = card.refusal.limit if card.refusal is not None else None
        reason = None
        if looks_inverted:
            reason = INVERTED_REASON
        elif card.refusal is not None and ood_score is not None and card.refusal.refuses(ood_score):
            reason = refusal_reason(ood_score, card.refusal.limit)
        if reason is not None:
            if refuse:
                return Prediction(probability=None, label=None, status=STATUS_REFUSED, ood_score=ood_score,
                                  ood_limit=limit, refusal_reason=reason, **base)
        raw = float(probability)
        calibration, levels = self.calibration, self.levels
        probability = calibration.apply_one(raw) if calibration is not None else raw
        label = card.label_for(probability, cut)
        level = levels.level_for(probability) if levels is not None else None
        subtype = None
        if card.subtype is not None and p_viral is not None and label == card.positive_class:
            subtype = card.subtype.label_for(p_viral)
        else:
            p_viral = None  # the subtype is only defined for PNEUMONIA labels
        return Prediction(
            probability=float(probability),
            label=label,
            status=STATUS_SCORED,
            ood_score=ood_score,
            ood_limit=limit,
            refusal_reason=reason,
            overridden=reason is not None,
            p_viral=None if p_viral is None else float(p_viral),
            subtype=subtype,
            raw_probability=raw,
            level=level,
            level_band=levels.band(level) if levels is not None and level is not None else None,
            **base,
        )

    # ---------------------------------------------------------------- public API

    def predict(
        self, images: Sequence[LoadedImage], threshold: float | None = None, refuse: bool = True
    ) -> list[Prediction]:
        """Predictions; with `refuse` (default) images over the card's refusal limit get no probability."""
        self._threshold(threshold)  # a bad threshold fails before any inference
        return [
            self.prediction(img.path, raw.probability[i], threshold, refuse=refuse, **raw.extras(i))
            for img, raw, i in self._run_in_batches(images, maps=False)
        ]

    def explain(self, image: LoadedImage, threshold: float | None = None, refuse: bool = True) -> Explanation:
        return self.explain_many([image], threshold, refuse)[0]

    def explain_many(self, images: Sequence[LoadedImage], threshold: float | None = None,
                     refuse: bool = True) -> list[Explanation]:
        """Predictions with Grad-CAM maps; a refused image gets no map (cam None)."""
        self._threshold(threshold)
        explanations = []
        for img, raw, i in self._run_in_batches(images):
            prediction = self.prediction(img.path, raw.probability[i], threshold, refuse=refuse, **raw.extras(i))
            cam = None if prediction.refused else raw.cam(i, img.height, img.width)
            explanations.append(Explanation(prediction=prediction, cam=cam))
        return explanations

    def _run_in_batches(self, images: Sequence[LoadedImage], maps: bool = True
                        ) -> Iterator[tuple[LoadedImage, RawOutputs, int]]:
        """Each image with the raw outputs of its batch and its index there."""
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            raw = self.run(np.stack([self.prepare(img) for img in chunk]), maps)
            for i, img in enumerate(chunk):
                yield img, raw, i

    def _threshold(self, threshold: float | None) -> float:
        cut = self.operating_point.value if threshold is None else float(threshold)
        if not (0.0 <= cut <= 1.0) or math.isnan(cut):
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        return cut
