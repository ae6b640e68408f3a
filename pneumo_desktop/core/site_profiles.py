"""Site profiles (an operating point calibrated on a site's labelled images) and where a threshold comes from.

A profile is a JSON file in the user's config folder (platformdirs; PNEUMO_DESKTOP_CONFIG_DIR overrides it).
It is bound to one model file by sha256: a profile made for another model is refused, because its threshold
means nothing for different probabilities. `resolve_threshold` is the one place that decides the threshold
and names its source: the command line (or a value typed by the user), else a named profile, else the
active profile, else the model card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pneumo_desktop.core.calibration import PlattCalibration
from pneumo_desktop.core.levels import OperatingLevels

log = logging.getLogger(__name__)

APP_DIR_NAME = "pneumo-desktop"
CONFIG_ENV = "PNEUMO_DESKTOP_CONFIG_DIR"
PROFILE_SCHEMA_VERSION = 1
ACTIVE_FILE = "active_profile.json"

SOURCE_CARD = "card"
SOURCE_COMMAND_LINE = "command-line"
SOURCE_PROFILE_PREFIX = "profile:"


class ProfileError(Exception):
    """A profile is missing, unreadable, or made for another model. The message is for the user."""


@dataclass(frozen=True)
class ThresholdChoice:
    value: float
    source: str  # "card", "command-line" or "profile:<name>" (the CSV's threshold_source column)
    note: str = ""  # why the expected source was not used (e.g. the active profile is for another model)
    # A profile's own calibration and levels (None: the card's). A profile made before calibration was applied
    # has neither: its threshold is on the model's raw output (raw_space) and the runtime maps it through the
    # card's calibration, so that it labels every image as it did.
    calibration: PlattCalibration | None = None
    levels: OperatingLevels | None = None
    raw_space: bool = False

    @property
    def profile_name(self) -> str | None:
        return self.source[len(SOURCE_PROFILE_PREFIX):] if self.source.startswith(SOURCE_PROFILE_PREFIX) else None

    def describe(self) -> str:
        """For people: 'site profile "Ward A"', 'model card', 'command line'."""
        return describe_source(self.source)


def describe_source(source: str) -> str:
    """A threshold source (CSV column, Prediction.threshold_source) in words."""
    if source.startswith(SOURCE_PROFILE_PREFIX):
        return f'site profile "{source[len(SOURCE_PROFILE_PREFIX):]}"'
    return {SOURCE_CARD: "model card", SOURCE_COMMAND_LINE: "command line", "explicit": "value given"}.get(
        source, source
    )


@dataclass(frozen=True)
class SiteProfile:
    name: str
    model_sha256: str
    model_name: str
    model_version: str
    threshold: float
    rule: dict[str, Any]  # {"kind": "min_sensitivity", "target": 0.95, "text": "..."}
    image_count: dict[str, int]  # scored, positives, negatives, not_scored
    figures: dict[str, Any]  # metrics at the new threshold (and at the card's, for comparison)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    data_folder: str = ""
    temperature: float | None = None  # fitted on the site's data: recorded, not applied (Platt below is)
    schema_version: int = PROFILE_SCHEMA_VERSION
    # Added with the levels (optional; older profiles have neither): the site's Platt scaling of the model output
    # (calibration.PlattCalibration.as_dict plus its figures), applied while the profile is active, and its
    # rule-out / rule-in points (levels.OperatingLevels.as_dict) on that calibrated probability.
    calibration: dict[str, Any] | None = None
    levels: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SiteProfile:
        """Parse and validate; anything malformed (wrong types, out-of-range numbers) is a ProfileError."""
        if not isinstance(data, dict):
            raise ProfileError(f"site profile is malformed: expected a JSON object, got {type(data).__name__}")
        try:
            profile = cls(
                name=_text(data["name"]),
                model_sha256=_text(data["model_sha256"]),
                model_name=_text(data["model_name"]),
                model_version=_text(data["model_version"]),
                threshold=_number(data["threshold"]),
                rule=_mapping(data["rule"]),
                image_count={str(k): int(v) for k, v in _mapping(data["image_count"]).items()},
                figures=_mapping(data["figures"]),
                created=_text(data["created"]),
                data_folder=_text(data.get("data_folder", "")),
                temperature=None if data.get("temperature") is None else _number(data["temperature"]),
                schema_version=int(data.get("schema_version", PROFILE_SCHEMA_VERSION)),
                calibration=None if data.get("calibration") is None else dict(data["calibration"]),
                levels=None if data.get("levels") is None else dict(data["levels"]),
            )
        except KeyError as exc:
            raise ProfileError(f"site profile is malformed: missing field {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProfileError(f"site profile is malformed: invalid field ({exc})") from None
        if not 0.0 <= profile.threshold <= 1.0:
            raise ProfileError(f"site profile {profile.name!r} has an invalid threshold {profile.threshold}")
        if profile.temperature is not None and not profile.temperature > 0:
            raise ProfileError(f"site profile {profile.name!r} has an invalid temperature {profile.temperature}")
        return profile

    def choice(self) -> ThresholdChoice:
        """This profile's operating point with its calibration and levels (ProfileError when they are malformed)."""
        source = SOURCE_PROFILE_PREFIX + self.name
        try:
            calibration = None if self.calibration is None else PlattCalibration.from_dict(self.calibration)
            levels = None if self.levels is None else OperatingLevels.from_dict(self.levels, source)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f'site profile "{self.name}" has a malformed calibration or levels: {exc}') from None
        return ThresholdChoice(self.threshold, source, calibration=calibration, levels=levels,
                               raw_space=calibration is None)

    def check_model(self, model_sha256: str) -> None:
        if self.model_sha256 != model_sha256:
            raise ProfileError(
                f'site profile "{self.name}" was calibrated for another model (sha256 {self.model_sha256[:12]}..., '
                f"{self.model_name} {self.model_version}); the loaded model is sha256 {model_sha256[:12]}.... "
                f"Its threshold does not apply: recalibrate with 'pneumo-desktop calibrate DIR --name \"{self.name}\"'"
            )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value}")
    return number


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return dict(value)


def _reject(constant: str) -> Any:
    raise ValueError(f"{constant} is not a number JSON allows")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: too large for a float
        raise ValueError(f"the number {text[:40]} is too large")
    return value


MAX_PROFILE_BYTES = 1 << 20  # a profile is a few kilobytes; a bigger file is not one of ours


def read_json_file(path: Path) -> Any:
    """The one reader of the profile files: any malformed file (not UTF-8, not JSON, numbers too large for a
    float, nesting too deep, too big) becomes a ProfileError with a one-line reason."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_PROFILE_BYTES + 1)
        if len(raw) > MAX_PROFILE_BYTES:
            raise ProfileError(f"cannot read {path}: the file is too large to be a site profile")
        return json.loads(raw.decode("utf-8"), parse_float=_parse_float, parse_constant=_reject)
    except ProfileError:
        raise
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"cannot read {path}: the file is not UTF-8 text") from None
    except RecursionError:
        raise ProfileError(f"cannot read {path}: the JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, our number checks
        raise ProfileError(f"cannot read {path}: not valid JSON ({exc})") from None


def read_profile_file(path: Path) -> SiteProfile:
    data = read_json_file(path)
    try:
        return SiteProfile.from_dict(data)
    except RecursionError:  # a deeply nested value in a field
        raise ProfileError(f"site profile {path} is malformed: nested too deeply") from None


# --------------------------------------------------------------------------- storage


def config_dir() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_DIR_NAME, appauthor=False))


def profiles_dir() -> Path:
    return config_dir() / "site_profiles"


def profile_file_name(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    if not slug:
        raise ProfileError(f"{name!r} cannot name a profile: use letters or digits")
    return slug.lower() + ".json"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_profile(profile: SiteProfile, activate: bool = True) -> Path:
    path = profiles_dir() / profile_file_name(profile.name)
    _write_json_atomic(path, profile.as_dict())
    if activate:
        set_active_profile(profile.name)
    return path


def load_profile(name: str) -> SiteProfile:
    path = profiles_dir() / profile_file_name(name)
    if not path.is_file():
        known = ", ".join(f'"{p.name}"' for p in list_profiles()) or "none"
        raise ProfileError(f'no site profile named "{name}" in {profiles_dir()} (profiles: {known})')
    return read_profile_file(path)


def list_profiles() -> list[SiteProfile]:
    profiles = []
    folder = profiles_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            profiles.append(read_profile_file(path))
        except ProfileError as exc:
            log.warning("skipping unreadable site profile %s: %s", path, exc)
    return profiles


def active_profile_name() -> str | None:
    path = config_dir() / ACTIVE_FILE
    if not path.exists():
        return None
    try:
        data = read_json_file(path)
        name = data.get("active") if isinstance(data, dict) else None
    except ProfileError as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None
    return name if isinstance(name, str) and name else None


def set_active_profile(name: str | None) -> None:
    """Make `name` the profile used by default (None: back to the model card's threshold)."""
    if name is not None:
        load_profile(name)  # refuse a name that does not exist
    _write_json_atomic(config_dir() / ACTIVE_FILE, {"active": name})


# --------------------------------------------------------------------------- the threshold and its source


def resolve_threshold(
    card_threshold: float,
    model_sha256: str,
    *,
    threshold: float | None = None,
    profile: str | None = None,
    use_active: bool = True,
) -> ThresholdChoice:
    """The threshold to use and where it comes from.

    Order: `threshold` (command line / typed) > `profile` by name (refused with ProfileError if missing or
    made for another model) > the active profile (one for another model is skipped, with a note and a
    warning, so that a model update never stops scoring) > the model card.
    """
    if threshold is not None:
        return ThresholdChoice(float(threshold), SOURCE_COMMAND_LINE)
    if profile is not None:
        chosen = load_profile(profile)
        chosen.check_model(model_sha256)
        return chosen.choice()
    if use_active:
        name = active_profile_name()
        if name is not None:
            try:
                active = load_profile(name)
                active.check_model(model_sha256)
                return active.choice()
            except ProfileError as exc:
                note = f"active site profile not used: {exc}"
                log.warning("%s", note)
                return ThresholdChoice(float(card_threshold), SOURCE_CARD, note)
    return ThresholdChoice(float(card_threshold), SOURCE_CARD)
