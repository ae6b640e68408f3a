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
    def from_dict(cls, data: dict[str, Any]) -> SiteProfile:
        try:
            profile = cls(
                name=str(data["name"]),
                model_sha256=str(data["model_sha256"]),
                model_name=str(data["model_name"]),
                model_version=str(data["model_version"]),
                threshold=float(data["threshold"]),
                rule=dict(data["rule"]),
                image_count={k: int(v) for k, v in dict(data["image_count"]).items()},
                figures=dict(data["figures"]),
                created=str(data["created"]),
                data_folder=str(data.get("data_folder", "")),
                temperature=None if data.get("temperature") is None else float(data["temperature"]),
                schema_version=int(data.get("schema_version", PROFILE_SCHEMA_VERSION)),
                calibration=None if data.get("calibration") is None else dict(data["calibration"]),
                levels=None if data.get("levels") is None else dict(data["levels"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"site profile is malformed: missing or invalid field {exc}") from exc
        if not 0.0 <= profile.threshold <= 1.0:
            raise ProfileError(f"site profile {profile.name!r} has an invalid threshold {profile.threshold}")
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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"cannot read site profile {path}: {exc}") from exc
    return SiteProfile.from_dict(data)


def list_profiles() -> list[SiteProfile]:
    profiles = []
    folder = profiles_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            profiles.append(SiteProfile.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ProfileError) as exc:
            log.warning("skipping unreadable site profile %s: %s", path, exc)
    return profiles


def active_profile_name() -> str | None:
    path = config_dir() / ACTIVE_FILE
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("active")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None
    return str(name) if name else None


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
