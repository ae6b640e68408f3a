"""TrainConfig from a recipe file and the command line: one source for every default.

The `train` subcommand's options are generated from TrainConfig's fields (`--epochs-stage2`, `--augment-gamma`,
...); a recipe (trainer/recipes/*.toml) sets any of them by field name (augmentation under `[augment]`); an
option given on the command line beats the recipe, the recipe beats the dataclass default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as a package (the train extra installs it there)
    import tomli as tomllib


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    zoom: float = 0.10  # scale drawn from [1 - zoom, 1 + zoom]
    shear_degrees: float = 5.0
    rotation_degrees: float = 10.0
    brightness: float = 0.10  # shift as a fraction of full scale
    contrast: float = 0.15  # factor drawn from [1 - contrast, 1 + contrast]
    # Random resized crop: a window of crop_scale_min..1 of the image area, aspect ratio within
    # [1/crop_aspect, crop_aspect], stretched back to the full input (1.0 = off).
    crop_scale_min: float = 1.0
    crop_aspect: float = 1.0
    gamma: float = 1.0  # exponent drawn log-uniformly from [1/gamma, gamma] (1.0 = off)
    # Against the outline-and-framing shortcut (model v4), each a per-image probability (0 = off), using the body
    # mask of core/body_mask.py warped with the image:
    # the region outside the body replaced by a random grey level with random noise;
    background_replace: float = 0.0
    # the body flattened to one grey (only outline and background left) with the target set to 0.5, "no
    # evidence either way", so the outline alone cannot push the probability anywhere;
    body_flatten: float = 0.0
    # a random rectangle at a random corner (side markers, labels) set to a random grey.
    corner_erase: float = 0.0

    @property
    def uses_body_mask(self) -> bool:
        return self.background_replace > 0 or self.body_flatten > 0

    @classmethod
    def disabled(cls) -> AugmentConfig:
        return cls(False, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


@dataclass
class TrainConfig:
    """Every training setting and its default, in one place: the CLI's options and the recipe files
    (trainer/recipes/*.toml) are read into this; the model card records it and the recipe text verbatim."""

    data_root: Path
    run_dir: Path
    backbone: str = "densenet121"
    weights: Path | None = None  # None: Keras downloads ImageNet weights (online); Path("none"): random
    input_size: int | None = None  # default: the backbone's
    batch_size: int = 32
    epochs_stage1: int = 3
    epochs_stage2: int = 4
    lr_stage1: float = 1e-3
    lr_stage2: float = 1e-4
    lr_schedule_stage2: str = "constant"  # "constant" | "cosine" (decays to 0 over the stage's epochs)
    patience: int = 2
    finetune_from: str | None = None  # default: the backbone's (last blocks)
    # No pretrained weights: both stages train the whole network (BatchNorm in training mode), stage 2 at
    # the lower learning rate; freezing a random backbone would measure nothing.
    from_scratch: bool = False
    val_fraction: float = 0.15
    seed: int = 42  # initialisation, shuffling and augmentation
    # The patient-grouped validation split's own seed: ensemble members trained with different seeds keep the
    # same validation patients, so the ensemble's validation figures stay unseen by every member.
    split_seed: int = 42
    head_units: int = 128
    dropout: float = 0.3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # A development set (a folder with NORMAL/ and PNEUMONIA/) from another batch of patients: scored after
    # every epoch to pick the epoch, and used for the temperature and the operating point. Never trained on.
    dev_root: Path | None = None
    # Second output P(viral | pneumonia), trained jointly; its loss only on pneumonia images, class-weighted.
    subtype_head: bool = False
    subtype_loss_weight: float = 0.5
    # Out-of-distribution statistics fitted at export; the refusal limit refuses at most this share of validation.
    ood: bool = True
    max_refused_share: float = 0.01
    min_sensitivity: float = 0.95
    calibrate: bool = True
    max_images: int | None = None  # train on a seeded subset (tests, smoke runs)
    strategy: str = "default"
    export_dir: Path | None = None
    # An ensemble: the members' recipe files. Each member is trained (resumably) by its own recipe, then they are
    # merged into one network (trainer/ensemble.py) that this recipe evaluates and exports; members must share
    # this recipe's backbone, input size, data and validation split.
    members: list[str] = field(default_factory=list)
    model_name: str = "pneumo-desktop-classifier"
    model_version: str = "1.0.0"
    command: str = ""
    recipe: str = ""  # the recipe file's text, recorded verbatim in the card

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("recipe")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


# Fields set by the CLI itself, not as generated options.
_NOT_OPTIONS = {"command", "recipe", "augment", "members"}
_HELP = {
    "data_root": "dataset ROOT with train/ (val/) inside", "run_dir": "logs, checkpoints, report (rerun to resume)",
    "weights": "local ImageNet weights file; 'none' = random initialisation (default: Keras download, online only)",
    "dev_root": "development folder with NORMAL/ and PNEUMONIA/: epoch selection, temperature, operating point; "
    "never trained on",
    "export_dir": "model folder to write (e.g. resources/model)",
}
_ALIASES = {"data_root": "--data", "export_dir": "--export", "model_name": "--name", "model_version": "--version"}


def _base_type(hint: Any) -> type:
    """The type behind a resolved hint (typing.get_type_hints), without its `| None`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(kind: type):
    return {bool: _parse_bool, Path: Path}.get(kind, kind)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (and per AugmentConfig field, prefixed --augment-); default None = not given."""
    parser.add_argument(
        "--recipe", type=Path, help="TOML recipe (trainer/recipes/*.toml); options given here override it"
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_OPTIONS:
            continue
        kind = _base_type(hints[f.name])
        flag = _ALIASES.get(f.name, "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else None
        # `--from-scratch` alone means true
        flag_style: dict[str, Any] = {"nargs": "?", "const": True} if kind is bool else {}
        parser.add_argument(flag, dest=f.name, type=_converter(kind), default=None, **flag_style,
                            help=_HELP.get(f.name, "") + (f" (default: {default})" if default is not None else ""))
    for f in dataclasses.fields(AugmentConfig):
        flag_style = {"nargs": "?", "const": True} if isinstance(f.default, bool) else {}
        parser.add_argument("--augment-" + f.name.replace("_", "-"), dest="augment_" + f.name, **flag_style,
                            type=_converter(type(f.default)), default=None, help=f"augmentation (default: {f.default})")


def read_recipe(path: Path) -> tuple[dict[str, Any], str]:
    text = Path(path).read_text(encoding="utf-8")
    values = tomllib.loads(text)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    augment_known = {f.name for f in dataclasses.fields(AugmentConfig)}
    bad_augment = set(values.get("augment", {})) - augment_known
    if bad_augment:
        raise ValueError(f"{path}: unknown [augment] setting(s) {', '.join(sorted(bad_augment))}")
    return values, text


def _resolve_weights(values: dict[str, Any]) -> None:
    if values.get("weights") in (Path("download"), "download"):
        values["weights"] = None  # Keras fetches the ImageNet weights (online machines only)


def config_from_recipe(path: Path, **overrides: Any) -> TrainConfig:
    """A recipe file alone (an ensemble's members), with `overrides` replacing its settings."""
    values, text = read_recipe(path)
    augment = values.pop("augment", {})
    hints = typing.get_type_hints(TrainConfig)
    values = {k: Path(v) if _base_type(hints[k]) is Path and v is not None else v for k, v in values.items()}
    values.update(overrides)
    _resolve_weights(values)
    return TrainConfig(**values, augment=AugmentConfig(**augment), recipe=text)


def config_from_args(args: argparse.Namespace, command: str) -> TrainConfig:
    values: dict[str, Any] = {}
    recipe_text = ""
    if args.recipe is not None:
        values, recipe_text = read_recipe(args.recipe)
    augment = dict(values.pop("augment", {}))
    for f in dataclasses.fields(AugmentConfig):
        given = getattr(args, "augment_" + f.name)
        if given is not None:
            augment[f.name] = given
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_OPTIONS:
            continue
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = given
        elif f.name in values and _base_type(hints[f.name]) is Path:
            values[f.name] = Path(values[f.name])
    _resolve_weights(values)
    for required in ("data_root", "run_dir"):
        if required not in values:
            raise ValueError(f"--{_ALIASES.get(required, required).lstrip('-').replace('_', '-')} is required "
                             "(on the command line or in the recipe)")
    return TrainConfig(**values, augment=AugmentConfig(**augment), command=command, recipe=recipe_text)
